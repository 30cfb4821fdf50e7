/**
 * Recursive removal that refuses to cross mount points. The state directory holds bind mounts
 * of user data (a bundle's rootfs, volumes); `rm -r` through one that failed to unmount would
 * destroy the user's files, so every removal checks /proc/self/mountinfo first.
 *
 * @internal
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { VmpodError } from '../errors.js';

/** A directory could not be removed because something is still mounted inside it. */
export class StillMountedError extends VmpodError {
  constructor(readonly dir: string, readonly mountPoints: string[]) {
    super('ERR_VMPOD_STILL_MOUNTED', `${dir} still has mounts inside (${mountPoints.join(', ')}): not removing it`);
  }
}

/** Decodes the octal escapes (`\040` for a space) of /proc/self/mountinfo fields. */
function unescapeMountField(field: string): string {
  return field.replace(/\\([0-7]{3})/gu, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

/** Mount points of this process's mount namespace. */
export async function mountPoints(): Promise<string[]> {
  const text = await fs.readFile('/proc/self/mountinfo', 'utf8');
  return text
    .split('\n')
    .filter((line) => line.length > 0)
    .map((line) => unescapeMountField(line.split(' ')[4] ?? ''));
}

/** Removes `dir` recursively unless a mount point lies at or under it. Missing dirs are fine. */
export async function removeTree(dir: string): Promise<void> {
  const root = path.resolve(dir);
  const real = await fs.realpath(root).catch(() => undefined);
  if (real === undefined) return;
  const inside = (await mountPoints()).filter((m) => m === real || m.startsWith(`${real}/`));
  if (inside.length > 0) throw new StillMountedError(real, inside);
  await fs.rm(real, { recursive: true, force: true });
}
