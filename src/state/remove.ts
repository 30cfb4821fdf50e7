/**
 * Removal of the host's own folders (a sandbox's state folder, a boot's folder): recursive, by
 * file descriptor, never following a symlink and never entering another mount. The state
 * directory holds mounts of user data while a sandbox runs (a bundle's rootfs, volumes, through
 * the share); a removal through one that failed to unmount would destroy the user's files, so it
 * refuses with {@link StillMountedError} instead.
 *
 * @internal
 * @module
 */
import path from 'node:path';
import { SystemError, VmpodError } from '../errors.js';
import { Dir, mountTable } from '../host/tree.js';

/** A directory could not be removed because something is still mounted inside it. */
export class StillMountedError extends VmpodError {
  constructor(readonly dir: string, readonly mountPoints: string[], options: { cause?: unknown } = {}) {
    super('ERR_VMPOD_STILL_MOUNTED', `${dir} still has mounts inside (${mountPoints.join(', ')}): not removing it`, options);
  }
}

/** Mount points of this process's mount namespace. */
export async function mountPoints(): Promise<string[]> {
  return (await mountTable()).map((m) => m.mountPoint);
}

/** Removes absolute `dir` recursively unless a mount lies at or under it. A missing folder is fine. */
export async function removeTree(dir: string): Promise<void> {
  const target = path.resolve(dir);
  const parent = await Dir.open(path.dirname(target)).catch((error: unknown) => {
    if (error instanceof SystemError && error.errnoName === 'ENOENT') return undefined;
    throw error;
  });
  if (!parent) return;
  try {
    await parent.removeTree(path.basename(target));
  } catch (error) {
    if (error instanceof SystemError && (error.errnoName === 'EBUSY' || error.errnoName === 'EXDEV')) {
      const inside = (await mountPoints()).filter((m) => m === target || m.startsWith(`${target}/`));
      throw new StillMountedError(target, inside, { cause: error });
    }
    throw error;
  } finally {
    parent.close();
  }
}
