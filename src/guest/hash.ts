/**
 * SHA-256 of files, streamed.
 *
 * @internal
 * @module
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import { writeFileAtomic } from '../state/atomic.js';

/** SHA-256 of a file, hex. */
export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  const handle = await fs.open(file, 'r');
  try {
    for await (const chunk of handle.createReadStream({ highWaterMark: 1 << 20 })) hash.update(chunk as Buffer);
  } finally {
    await handle.close();
  }
  return hash.digest('hex');
}

/**
 * SHA-256 of a file, remembered in `stampFile` by the file's size, mtime and inode, so that an
 * unchanged file is not read again (a sandbox start checks the agent binary this way).
 * The stamp is only a cache: any mismatch, or an unreadable stamp, hashes the file again.
 */
export async function sha256FileStamped(file: string, stampFile: string): Promise<string> {
  const stat = await fs.stat(file);
  const key = `${stat.size}:${stat.mtimeMs}:${stat.ino}:${file}`;
  const stamp = await fs
    .readFile(stampFile, 'utf8')
    .then((text) => JSON.parse(text) as { key?: unknown; sha256?: unknown })
    .catch(() => undefined);
  if (stamp?.key === key && typeof stamp.sha256 === 'string' && /^[0-9a-f]{64}$/u.test(stamp.sha256)) return stamp.sha256;
  const sha256 = await sha256File(file);
  await writeFileAtomic(stampFile, JSON.stringify({ key, sha256 }), 0o644).catch(() => undefined);
  return sha256;
}
