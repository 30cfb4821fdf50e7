/**
 * What volumes give a container: OCI bind mounts of the volumes it asks for, a hugetlbfs at
 * `/dev/hugepages` when its spec sets hugepage limits, and its rootfs as an ext4 image on a
 * hot-plugged disk (instead of through the virtio-fs share).
 *
 * @internal
 * @module
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { InvalidArgumentError, NotFoundError, VmpodError } from '../../../errors.js';
import type { OciMount, OciSpec } from '../../../agent/messages.js';
import { VolumeReadOnlyError } from '../../../volume/errors.js';
import { volumesState } from './index.js';
import { Dir } from '../../../host/tree.js';
import type { ContainerVolume } from '../../../volume/spec.js';

const exec = promisify(execFile);

/** Making a container's rootfs image failed (mkfs.ext4 from e2fsprogs). */
export class RootfsImageError extends VmpodError {
  constructor(readonly rootfs: string, message: string, options: { cause?: unknown } = {}) {
    super('ERR_VMPOD_ROOTFS_IMAGE', `rootfs ${rootfs}: ${message}`, options);
  }
}

/**
 * The OCI mounts of a container's volumes (`mount --rbind [-o ro] GUEST_PATH DEST` in the
 * container) and, when `linux.resources.hugepageLimits` sets a limit and no mount is at
 * `/dev/hugepages`, a hugetlbfs there (`mount -t hugetlbfs -o pagesize=2M,size=LIMIT`).
 */
export function containerMounts(volumesStateValue: unknown, wanted: readonly ContainerVolume[], spec: OciSpec, guestPages: number): OciMount[] {
  const volumes = volumesState(volumesStateValue).volumes;
  const mounts: OciMount[] = wanted.map((w, i) => {
    const volume = volumes.find((v) => v.spec.name === w.volume && v.container === undefined && v.pending === undefined);
    if (!volume || volume.guestPath === undefined) throw new NotFoundError('volume', w.volume);
    const readOnly = w.readOnly === true;
    const volumeRo = 'readOnly' in volume.spec && volume.spec.readOnly === true;
    if (volumeRo && !readOnly) throw new VolumeReadOnlyError(w.volume, undefined);
    if (volume.spec.kind === 'hugepages' && readOnly) {
      throw new InvalidArgumentError(`volumes[${i}].readOnly`, 'a hugepages volume cannot be mapped read-only by DPDK programs: leave readOnly off');
    }
    return { destination: w.destination, type: 'bind', source: volume.guestPath, options: ['rbind', readOnly ? 'ro' : 'rw'] };
  });
  const limits = (spec.linux as { resources?: { hugepageLimits?: { pageSize?: unknown; limit?: unknown }[] } } | undefined)?.resources?.hugepageLimits ?? [];
  const limit = limits.find((l) => l.pageSize === '2MB' || l.pageSize === '2M');
  const others = limits.filter((l) => l !== limit && typeof l.limit === 'number' && l.limit > 0);
  if (others.length > 0) throw new InvalidArgumentError('linux.resources.hugepageLimits', 'the guest has only 2 MiB hugepages ("2MB")');
  const hasMount = [...(spec.mounts ?? []), ...mounts].some((m) => m.destination.replace(/\/+$/u, '') === '/dev/hugepages');
  if (limit && typeof limit.limit === 'number' && limit.limit > 0 && !hasMount) {
    if (guestPages === 0) {
      throw new InvalidArgumentError('linux.resources.hugepageLimits', 'the sandbox reserves no guest hugepages: create it with hugepages.guestPages');
    }
    const size = Math.floor(limit.limit / (2 * 1024 * 1024)) * 2 * 1024 * 1024;
    mounts.push({ destination: '/dev/hugepages', type: 'hugetlbfs', source: 'nodev', options: ['nosuid', 'nodev', 'pagesize=2M', `size=${size}`] });
  }
  return mounts;
}

/**
 * Makes the missing mount points `wanted` in the host rootfs `rootfs` of a container whose root
 * is read-only: its share is read-only, so the guest cannot make them, and runc makes mount
 * points in the rootfs it is given before it turns it read-only. Directories (0755), or empty
 * files (0644) for the destinations in `files` (a bind of a file); never through a symlink or
 * another mount; a destination below an earlier mount of `all` (e.g. under /dev) is made in that
 * mount by the agent. What cannot be made so is left to the agent, whose error names it.
 */
export async function makeMountPoints(
  rootfs: string,
  wanted: readonly Pick<OciMount, 'destination'>[],
  all: readonly OciMount[],
  files: ReadonlySet<string> = new Set(),
): Promise<void> {
  const relative = (destination: string): string => path.posix.normalize(`/${destination}`).replace(/^\/+|\/+$/gu, '');
  let root: Dir;
  try {
    root = await Dir.open(rootfs);
  } catch {
    return;
  }
  try {
    for (const m of wanted) {
      const dest = relative(m.destination);
      // The agent mounts a tmpfs on /dev when the spec has no /dev mount of its own.
      const earlier = ['dev', ...all.slice(0, Math.max(all.indexOf(m as OciMount), 0)).map((o) => relative(o.destination))];
      if (dest === '' || earlier.some((e) => e === '' || dest.startsWith(`${e}/`))) continue;
      if (!files.has(m.destination)) {
        await root.mkdirp(dest, 0o755).then((made) => made.close(), () => undefined);
        continue;
      }
      const parent = path.posix.dirname(dest);
      await root.mkdirp(parent === '.' ? '' : parent, 0o755).then(
        async (dir) => {
          try {
            if (!(await dir.statIfExists(path.posix.basename(dest)))) await dir.createFile(path.posix.basename(dest), 0o644);
          } finally {
            if (dir !== root) dir.close();
          }
        },
        () => undefined,
      ).catch(() => undefined);
    }
  } finally {
    root.close();
  }
}

/** Bytes under `dir` (allocated blocks), for sizing an image. */
async function treeSize(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await fs.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    const st = await fs.lstat(p);
    total += Math.max(st.blocks * 512, 4096);
    if (entry.isDirectory()) total += await treeSize(p);
  }
  return total;
}

/** The volume name of a container's rootfs image. */
export function rootfsVolumeName(containerId: string): string {
  return `rootfs-${createHash('sha256').update(containerId).digest('hex').slice(0, 8)}`;
}

/**
 * Makes an ext4 image of directory `rootfs` at `image` (`mkfs.ext4 -d ROOTFS IMG SIZE`, sized
 * from the tree plus room to write), for a container's rootfs on a hot-plugged disk.
 */
export async function makeRootfsImage(rootfs: string, image: string, signal?: AbortSignal): Promise<void> {
  const sizeKiB = Math.ceil(((await treeSize(rootfs)) * 1.25 + 16 * 1024 * 1024) / 1024 / 4) * 4;
  try {
    await exec('mkfs.ext4', ['-q', '-F', '-O', '^has_journal', '-E', 'root_owner=0:0', '-d', rootfs, image, `${sizeKiB}k`], {
      ...(signal ? { signal } : {}),
    });
  } catch (cause) {
    await fs.rm(image, { force: true });
    const stderr = (cause as { stderr?: string }).stderr?.trim();
    throw new RootfsImageError(rootfs, `mkfs.ext4 -d failed${stderr ? `: ${stderr}` : ''} (e2fsprogs 1.43+ is needed)`, { cause });
  }
}
