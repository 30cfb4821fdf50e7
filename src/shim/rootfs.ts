/**
 * The rootfs mounts containerd hands to Create (`CreateTaskRequest.rootfs`): an overlay from the
 * overlayfs snapshotter (`lowerdir=A:B,upperdir=U,workdir=W`), or a bind from the native one,
 * mounted in order on BUNDLE/rootfs — the directory the library then shares with the VM as the
 * container's root (the share clones what is mounted there). Every mount is checked before any
 * system call: types and options from an allow-list, every path absolute and normalised, counts
 * and the kernel's one-page limit on mount data bounded. The mounts are made with the addon's
 * mount(2) (it takes overlay's option string as it is), never with a mount command.
 *
 * `unmountRootfs` unmounts whatever is stacked there; a mount still busy is detached (MNT_DETACH):
 * the VM has by then been told to drop the container, and a lazy detach frees the snapshot as soon
 * as the last user goes, where a refusal would leave it mounted for good.
 *
 * Equivalent: `mount -t overlay overlay -o lowerdir=...,upperdir=...,workdir=... BUNDLE/rootfs`;
 * `umount BUNDLE/rootfs || umount -l BUNDLE/rootfs`.
 *
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { SystemError } from '../errors.js';
import { callNative } from '../native-call.js';
import { native } from '../native.js';
import type { Mount } from './proto/index.js';
import { GrpcCode, TtrpcError } from './ttrpc/status.js';

/** The most mounts one Create may ask for. */
export const MAX_ROOTFS_MOUNTS = 16;
/** The most lower layers of one overlay. */
export const MAX_LOWER_DIRS = 500;
/** mount(2) copies one page of option data: the options must be shorter. */
export const MAX_MOUNT_DATA = 4095;

const FLAG_OPTIONS = ['ro', 'rw', 'nosuid', 'nodev', 'noexec', 'noatime'] as const;
/** overlay's own options and the values allowed (null: a path or a path list). */
const OVERLAY_OPTIONS: Readonly<Record<string, readonly string[] | null>> = {
  lowerdir: null,
  upperdir: null,
  workdir: null,
  index: ['on', 'off'],
  redirect_dir: ['on', 'off', 'follow', 'nofollow'],
  metacopy: ['on', 'off'],
  xino: ['on', 'off', 'auto'],
  userxattr: [],
  volatile: [],
};

function invalid(message: string): TtrpcError {
  return new TtrpcError(GrpcCode.INVALID_ARGUMENT, `rootfs: ${message}`);
}

/** An absolute, normalised path with no `.`/`..`/empty component and no character mount data cannot carry. */
function checkPath(what: string, p: string): string {
  if (!p.startsWith('/') || p.length > 4095) throw invalid(`${what} ${JSON.stringify(p)} is not an absolute path`);
  if (/[\0,:\\\n]/u.test(p)) throw invalid(`${what} ${JSON.stringify(p)} contains a character mount options cannot carry (NUL , : \\ newline)`);
  if (p !== '/' && p.split('/').slice(1).some((c) => c === '' || c === '.' || c === '..')) {
    throw invalid(`${what} ${JSON.stringify(p)} is not normalised (no ".", "..", "//" or trailing "/")`);
  }
  return p;
}

/** What one checked mount does. */
export type RootfsMountPlan =
  | { kind: 'overlay'; source: string; flags: number; data: string; lower: string[]; upper: string | undefined }
  | { kind: 'bind'; source: string; recursive: boolean; flags: number };

function flagOf(option: (typeof FLAG_OPTIONS)[number]): number {
  const c = native().mountConstants;
  switch (option) {
    case 'ro':
      return c.MS_RDONLY;
    case 'nosuid':
      return c.MS_NOSUID;
    case 'nodev':
      return c.MS_NODEV;
    case 'noexec':
      return c.MS_NOEXEC;
    case 'noatime':
      return c.MS_NOATIME;
    case 'rw':
      return 0;
  }
}

function isFlag(option: string): option is (typeof FLAG_OPTIONS)[number] {
  return (FLAG_OPTIONS as readonly string[]).includes(option);
}

/** Checks one mount of CreateTaskRequest.rootfs; nothing is touched. */
export function planRootfsMount(mount: Mount, index: number): RootfsMountPlan {
  const where = `mount ${index} (${JSON.stringify(mount.type)})`;
  if (mount.target !== '') throw invalid(`${where}: a target (${JSON.stringify(mount.target)}) is not supported; rootfs mounts go on the bundle's rootfs`);
  if (!Array.isArray(mount.options) || mount.options.length > 64) throw invalid(`${where}: at most 64 options`);
  const seen = new Set<string>();
  let flags = 0;
  if (mount.type === 'overlay') {
    if (!/^[A-Za-z0-9_.-]{1,64}$/u.test(mount.source)) throw invalid(`${where}: the source of an overlay is a name such as "overlay", not ${JSON.stringify(mount.source)}`);
    const values = new Map<string, string>();
    for (const option of mount.options) {
      const eq = option.indexOf('=');
      const key = eq < 0 ? option : option.slice(0, eq);
      if (seen.has(key)) throw invalid(`${where}: option "${key}" is given twice`);
      seen.add(key);
      if (isFlag(option)) {
        flags |= flagOf(option);
        continue;
      }
      const allowed = OVERLAY_OPTIONS[key];
      if (allowed === undefined) throw invalid(`${where}: option ${JSON.stringify(option)} is not allowed (allowed: ${[...FLAG_OPTIONS, ...Object.keys(OVERLAY_OPTIONS)].join(', ')})`);
      const value = eq < 0 ? undefined : option.slice(eq + 1);
      if (allowed === null) {
        if (value === undefined || value === '') throw invalid(`${where}: option "${key}" needs a path`);
        values.set(key, value);
      } else if (allowed.length === 0) {
        if (value !== undefined) throw invalid(`${where}: option "${key}" takes no value`);
      } else if (value === undefined || !allowed.includes(value)) {
        throw invalid(`${where}: option "${key}" is one of ${allowed.join(', ')}`);
      }
    }
    const lowerText = values.get('lowerdir');
    if (lowerText === undefined) throw invalid(`${where}: an overlay needs lowerdir`);
    const lower = lowerText.split(':');
    if (lower.length > MAX_LOWER_DIRS) throw invalid(`${where}: ${lower.length} lower layers, at most ${MAX_LOWER_DIRS}`);
    lower.forEach((dir, i) => checkPath(`${where}: lowerdir ${i}`, dir));
    const upper = values.get('upperdir');
    const work = values.get('workdir');
    if ((upper === undefined) !== (work === undefined)) throw invalid(`${where}: upperdir and workdir go together`);
    if (upper !== undefined) checkPath(`${where}: upperdir`, upper);
    if (work !== undefined) checkPath(`${where}: workdir`, work);
    const data = mount.options.filter((o) => !isFlag(o)).join(',');
    if (data.length > MAX_MOUNT_DATA) {
      throw invalid(`${where}: the overlay options are ${data.length} bytes, over the kernel's limit of ${MAX_MOUNT_DATA} (${lower.length} layers)`);
    }
    return { kind: 'overlay', source: mount.source, flags, data, lower, upper };
  }
  if (mount.type === 'bind' || mount.type === 'rbind') {
    checkPath(`${where}: source`, mount.source);
    let recursive = mount.type === 'rbind';
    for (const option of mount.options) {
      if (seen.has(option)) throw invalid(`${where}: option "${option}" is given twice`);
      seen.add(option);
      if (option === 'bind') continue;
      if (option === 'rbind') {
        recursive = true;
        continue;
      }
      if (!isFlag(option)) throw invalid(`${where}: option ${JSON.stringify(option)} is not allowed (allowed: bind, rbind, ${FLAG_OPTIONS.join(', ')})`);
      flags |= flagOf(option);
    }
    return { kind: 'bind', source: mount.source, recursive, flags };
  }
  throw invalid(`${where}: type ${JSON.stringify(mount.type)} is not supported (overlay, bind, rbind)`);
}

function checkBundle(bundle: string): string {
  if (!path.isAbsolute(bundle) || path.normalize(bundle) !== bundle || bundle.includes('\0')) {
    throw invalid(`the bundle ${JSON.stringify(bundle)} is not an absolute, normalised path`);
  }
  return bundle;
}

/** Makes BUNDLE/rootfs (0711) if missing; refuses a symlink, a non-directory, or one already mounted on. */
async function prepareTarget(target: string): Promise<void> {
  try {
    await fs.mkdir(target, { mode: 0o711 });
    await fs.chmod(target, 0o711);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
  const st = await fs.lstat(target);
  if (!st.isDirectory()) throw invalid(`${target} is not a directory`);
  if (await isMountPoint(target)) throw new TtrpcError(GrpcCode.FAILED_PRECONDITION, `rootfs: ${target} is already a mount point`);
}

async function unmountOnce(target: string, detach: boolean): Promise<boolean> {
  const c = native().mountConstants;
  try {
    await callNative((n) => n.umount(target, c.UMOUNT_NOFOLLOW | (detach ? c.MNT_DETACH : 0)));
    return true;
  } catch (error) {
    const code = error instanceof SystemError ? error.errnoName : undefined;
    if (code === 'EINVAL' || code === 'ENOENT') return false; // not a mount point, or no rootfs at all
    if (code === 'EBUSY' && !detach) return unmountOnce(target, true);
    throw error;
  }
}

/**
 * Mounts containerd's rootfs mounts, in order, on BUNDLE/rootfs (made 0711 if missing). Every
 * mount is checked first (TtrpcError INVALID_ARGUMENT saying what is wrong); a failing mount
 * undoes the ones before it. No mounts: nothing to do (the bundle's rootfs is used as it is).
 */
export async function mountRootfs(bundle: string, mounts: Mount[]): Promise<void> {
  checkBundle(bundle);
  if (mounts.length > MAX_ROOTFS_MOUNTS) throw invalid(`${mounts.length} mounts, at most ${MAX_ROOTFS_MOUNTS}`);
  const plans = mounts.map((m, i) => planRootfsMount(m, i));
  if (plans.length === 0) return;
  const target = path.join(bundle, 'rootfs');
  await prepareTarget(target);
  const c = native().mountConstants;
  let done = 0;
  try {
    for (const plan of plans) {
      if (plan.kind === 'overlay') {
        await callNative((n) => n.mount(plan.source, target, 'overlay', plan.flags, plan.data));
      } else {
        await callNative((n) => n.mount(plan.source, target, null, c.MS_BIND | (plan.recursive ? c.MS_REC : 0), null));
        done++;
        // A bind takes its flags only from a remount.
        if (plan.flags !== 0) await callNative((n) => n.mount(null, target, null, c.MS_REMOUNT | c.MS_BIND | plan.flags, null));
        continue;
      }
      done++;
    }
  } catch (error) {
    for (; done > 0; done--) await unmountOnce(target, true).catch(() => undefined);
    throw error;
  }
}

/**
 * Unmounts everything mounted on BUNDLE/rootfs (stacked mounts too); a busy one is detached.
 * Idempotent: nothing mounted, or no rootfs directory, is fine.
 */
export async function unmountRootfs(bundle: string): Promise<void> {
  const target = path.join(checkBundle(bundle), 'rootfs');
  for (let i = 0; i < MAX_ROOTFS_MOUNTS + 1; i++) {
    if (!(await isMountPoint(target))) return;
    await unmountOnce(target, false);
  }
  throw new TtrpcError(GrpcCode.INTERNAL, `rootfs: ${target} still has mounts after ${MAX_ROOTFS_MOUNTS + 1} unmounts`);
}

/** Something is mounted on `target` (statx of it in its parent, not followed); false when it is missing. */
async function isMountPoint(target: string): Promise<boolean> {
  const c = native().pathConstants;
  let dirFd: number;
  try {
    dirFd = await callNative((n) => n.openAt(c.AT_FDCWD, path.dirname(target), c.O_PATH | c.O_DIRECTORY, 0));
  } catch (error) {
    if (error instanceof SystemError && error.errnoName === 'ENOENT') return false;
    throw error;
  }
  try {
    return (await callNative((n) => n.statAt(dirFd, path.basename(target)))).mountRoot;
  } catch (error) {
    if (error instanceof SystemError && error.errnoName === 'ENOENT') return false;
    throw error;
  } finally {
    native().closeFd(dirFd);
  }
}
