/**
 * Crash-safe file writes: a reader sees either the old content or the new one, never a torn
 * file, whatever moment the writer dies at.
 *
 * @internal
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';

/** Writes `data` to `file` atomically: temp file in the same directory, fsync, rename, fsync dir. */
export async function writeFileAtomic(file: string, data: string | Uint8Array, mode = 0o600): Promise<void> {
  const dir = path.dirname(file);
  const temp = path.join(dir, `.${path.basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  const handle = await fs.open(temp, 'wx', mode);
  try {
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.rename(temp, file);
  } catch (error) {
    await fs.rm(temp, { force: true });
    throw error;
  }
  const dirHandle = await fs.open(dir, 'r');
  try {
    await dirHandle.sync();
  } finally {
    await dirHandle.close();
  }
}

/** Removes temp files a crashed {@link writeFileAtomic} may have left in `dir`. */
export async function removeStaleTempFiles(dir: string): Promise<void> {
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch {
    return;
  }
  await Promise.all(
    names.filter((n) => n.startsWith('.') && n.endsWith('.tmp')).map((n) => fs.rm(path.join(dir, n), { force: true })),
  );
}
