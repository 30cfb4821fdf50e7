/**
 * Typed mount(2)/umount2(2) for the host side: hugetlbfs here, shared directories and block
 * volumes elsewhere. The calls run on the libuv pool (they can block), never on Node's main
 * thread. Failures are {@link SystemError}s carrying the kernel's errno (e.g. `EBUSY` for a busy
 * unmount, `EROFS`/`EACCES` for a read-only source mounted read-write).
 *
 * @module
 */
import { InvalidArgumentError, type SystemError } from '../errors.js';
import { native } from '../native.js';
import { systemError } from '../native-call.js';
import { absolutePath } from '../validate.js';

/** Mount flags by their `mount -o` names. */
export type MountFlag =
  | 'ro'
  | 'nosuid'
  | 'nodev'
  | 'noexec'
  | 'noatime'
  | 'remount'
  | 'bind'
  | 'rec'
  | 'private'
  | 'slave'
  | 'shared'
  | 'unbindable';

const FLAG_CONSTANT = {
  ro: 'MS_RDONLY',
  nosuid: 'MS_NOSUID',
  nodev: 'MS_NODEV',
  noexec: 'MS_NOEXEC',
  noatime: 'MS_NOATIME',
  remount: 'MS_REMOUNT',
  bind: 'MS_BIND',
  rec: 'MS_REC',
  private: 'MS_PRIVATE',
  slave: 'MS_SLAVE',
  shared: 'MS_SHARED',
  unbindable: 'MS_UNBINDABLE',
} as const satisfies Record<MountFlag, string>;

/** What to mount. */
export interface MountOptions {
  /** Source (device, directory for `bind`, or a label such as `hugetlbfs`); null for propagation changes. */
  source?: string | null;
  /** Filesystem type, e.g. `hugetlbfs`, `tmpfs`; null for bind mounts and propagation changes. */
  fstype?: string | null;
  flags?: readonly MountFlag[];
  /** Filesystem-specific options, e.g. `pagesize=2M,size=64M`. */
  data?: string | null;
}

/**
 * Mounts on `target`.
 *
 * Equivalent: `mount -t FSTYPE -o FLAGS,DATA SOURCE TARGET`.
 */
export async function mount(target: string, options: MountOptions = {}): Promise<void> {
  const where = absolutePath(target, 'target');
  const { source = null, fstype = null, data = null, flags = [] } = options;
  if (source !== null && (typeof source !== 'string' || source.length === 0 || source.includes('\0'))) {
    throw new InvalidArgumentError('source', `${JSON.stringify(source)} is not a mount source`);
  }
  if (fstype !== null && (typeof fstype !== 'string' || !/^[a-z0-9][a-z0-9._-]{0,31}$/u.test(fstype))) {
    throw new InvalidArgumentError('fstype', `${JSON.stringify(fstype)} is not a filesystem type`);
  }
  if (data !== null && (typeof data !== 'string' || data.includes('\0'))) {
    throw new InvalidArgumentError('data', 'mount data must be a string without NUL bytes');
  }
  const addon = native();
  let bits = 0;
  for (const flag of flags) {
    const name = (FLAG_CONSTANT as Record<string, keyof typeof addon.mountConstants>)[flag];
    if (name === undefined) throw new InvalidArgumentError('flags', `unknown mount flag ${JSON.stringify(flag)}`);
    bits |= addon.mountConstants[name];
  }
  try {
    await addon.mount(source, where, fstype, bits, data);
  } catch (cause) {
    throw systemError(cause);
  }
}

/** How to unmount. */
export interface UnmountOptions {
  /** Lazy unmount (`MNT_DETACH`): detach now, clean up when no longer busy. */
  detach?: boolean;
  /** Do not follow a symlink at `target` (`UMOUNT_NOFOLLOW`). */
  noFollow?: boolean;
}

/**
 * Unmounts `target`; a busy mount fails with EBUSY unless `detach` is given.
 *
 * Equivalent: `umount [-l] TARGET`.
 */
export async function unmount(target: string, options: UnmountOptions = {}): Promise<void> {
  const where = absolutePath(target, 'target');
  const addon = native();
  const c = addon.mountConstants;
  const flags = (options.detach ? c.MNT_DETACH : 0) | (options.noFollow ? c.UMOUNT_NOFOLLOW : 0);
  try {
    await addon.umount(where, flags);
  } catch (cause) {
    throw systemError(cause);
  }
}
