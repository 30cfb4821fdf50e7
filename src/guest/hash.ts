/**
 * SHA-256 of files, streamed.
 *
 * @internal
 * @module
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';

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
