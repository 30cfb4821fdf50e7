/**
 * The sandbox's shared directory on the host, exported to the guest by virtiofsd.
 *
 * It is a bind mount of itself made a shared mount (`mount --bind D D; mount --make-shared D`):
 * virtiofsd runs in a mount namespace of its own that is a slave of the host's, so bind mounts
 * vmpod adds under D later (a container's rootfs, a volume) propagate into virtiofsd and so into
 * the guest, without restarting anything. Each mount point is handed to `record` before it is
 * made, so a crash in between leaves a note that `release` can act on.
 *
 * @internal
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { mount, unmount } from '../devices/mount.js';
import { SystemError } from '../errors.js';

/** Adds a mount point to the persisted record (before it is mounted). */
export type RecordMount = (mountPoint: string) => Promise<void>;

/** Makes `dir` a shared mount of itself. */
export async function prepareSharedDir(dir: string, record: RecordMount): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  await record(dir);
  await mount(dir, { source: dir, flags: ['bind'] });
  await mount(dir, { flags: ['shared'] });
}

/**
 * Bind-mounts host path `source` (a directory or a file) at `target` inside the shared dir
 * (`mount --bind [-o ro] SOURCE TARGET`).
 */
export async function bindIntoSharedDir(
  source: string,
  target: string,
  options: { readOnly: boolean; record: RecordMount },
): Promise<void> {
  const stat = await fs.stat(source);
  await fs.mkdir(stat.isDirectory() ? target : path.dirname(target), { recursive: true, mode: 0o700 });
  if (!stat.isDirectory()) await (await fs.open(target, 'a', 0o600)).close();
  await options.record(target);
  await mount(target, { source, flags: ['bind', 'rec'] });
  if (options.readOnly) {
    await mount(target, { source: null, flags: ['remount', 'bind', 'ro'] });
  }
}

/** True when an unmount error means "nothing (left) to unmount there". */
function isNotMounted(error: unknown): boolean {
  return error instanceof SystemError && (error.errnoName === 'EINVAL' || error.errnoName === 'ENOENT');
}

/**
 * Unmounts each mount point (deepest first, i.e. in reverse order) lazily; a point that is not
 * mounted is skipped. Returns the points released; throws the first real failure after trying all.
 */
export async function releaseMounts(mountPoints: readonly string[]): Promise<string[]> {
  const released: string[] = [];
  let failure: unknown;
  for (const point of [...mountPoints].reverse()) {
    try {
      // A bind mount may be stacked (a crash between two mounts of one point): unmount all layers.
      for (let layer = 0; layer < 8; layer++) await unmount(point, { detach: true, noFollow: true });
    } catch (error) {
      if (!isNotMounted(error)) {
        failure ??= error;
        continue;
      }
    }
    released.push(point);
  }
  if (failure !== undefined) throw failure;
  return released;
}
