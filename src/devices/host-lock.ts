/**
 * Host-wide locks for the host state that every vmpod process shares, whatever its state
 * directory: the hugepage pools (`nr_hugepages` is one number per page size for the whole host)
 * and the drivers of IOMMU groups. Changing them is a read-modify-write of sysfs, so two
 * sandboxes doing it at once lose each other's update unless they take the same lock.
 *
 * Each lock is an flock(2) on a file of one folder, by default `/run/lock/vmpod` (created mode
 * 0700; `/run` is a tmpfs, so a reboot, which also resets the pools and the drivers, clears it):
 *
 * - `hugepages-<kB>kB.lock`: the pools of one page size (global and per NUMA node: a write to a
 *   node's pool changes the global one);
 * - `vfio-group-<N>.lock`: the drivers of IOMMU group N, and next to it the group's claim
 *   `vfio-group-<N>.json` (see `bindVfio`).
 *
 * The kernel drops an flock when its holder dies, so a crash never leaves a lock held. A lock is
 * held only across the few sysfs reads and writes of one change, never while a VM runs.
 *
 * The folder follows the sysfs tree the call acts on, since the lock protects that tree's state:
 * `/run/lock/vmpod` for the host's sysfs (`/sys`, or any sysfs mount), `<root>/.vmpod-lock` for
 * another tree (a generated one in tests), unless `lockDir` names one.
 *
 * Shell equivalent: `flock /run/lock/vmpod/hugepages-2048kB.lock sh -c 'N=$(cat nr_hugepages); echo $((N + 4)) > nr_hugepages'`.
 *
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { absolutePath, integer } from '../validate.js';
import { FileLock } from '../state/lock.js';
import { HostLockError } from './errors.js';
import { sysfsOf, type SysfsOptions } from './sysfs.js';

/** The folder of the host locks for the host's own sysfs. */
export const DEFAULT_HOST_LOCK_DIR = '/run/lock/vmpod';

/** Name of the folder inside a sysfs tree other than the host's (see {@link hostLockDir}). */
export const TREE_LOCK_DIR = '.vmpod-lock';

/** statfs(2) f_type of sysfs. */
const SYSFS_MAGIC = 0x62656572;

/** Default wait for a host lock held by another process. */
const DEFAULT_TIMEOUT_MS = 60_000;

/** Options of the calls that take a host lock (hugepage reservations, VFIO bindings). */
export interface HostLockOptions {
  /**
   * Folder of the host locks (an absolute path). Default: {@link DEFAULT_HOST_LOCK_DIR} when the
   * sysfs tree is the host's (`/sys` or a sysfs mount), else `<sysfs root>/.vmpod-lock`, so that
   * tests on a generated tree never contend with real users. Every process that changes the same
   * host state must use the same folder.
   */
  lockDir?: string | undefined;
  /** How long to wait for a lock another process holds, in ms (default 60000); then `TimeoutError`. */
  lockTimeoutMs?: number | undefined;
  /** Cancels the wait for a lock (`AbortError`). */
  signal?: AbortSignal | undefined;
}

/** The host lock folder for a sysfs tree (see {@link HostLockOptions.lockDir}); creates nothing. */
export async function hostLockDir(options: SysfsOptions & HostLockOptions = {}): Promise<string> {
  if (options.lockDir !== undefined) return absolutePath(options.lockDir, 'lockDir');
  const root = sysfsOf(options).root;
  if (root === '/sys') return DEFAULT_HOST_LOCK_DIR;
  const type = await fs.statfs(root).then(
    (s) => s.type,
    () => undefined,
  );
  return type === SYSFS_MAGIC ? DEFAULT_HOST_LOCK_DIR : path.join(root, TREE_LOCK_DIR);
}

/**
 * Creates the lock folder (mode 0700) or checks the one that is there: a directory (not a
 * symlink) of this process's user that no one else can write to. `/run/lock` is writable by
 * everyone, so a folder someone else made first must not be trusted.
 */
async function ensureLockDir(dir: string, parents: boolean): Promise<void> {
  let created: string | undefined;
  try {
    if (parents) created = await fs.mkdir(dir, { recursive: true, mode: 0o700 });
    else created = await fs.mkdir(dir, { mode: 0o700 }).then(() => dir);
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code !== 'EEXIST') {
      throw new HostLockError(dir, `cannot create it (${(cause as Error).message})`, { cause });
    }
  }
  if (created !== undefined) {
    await fs.chmod(dir, 0o700); // exactly 0700, whatever the umask
    return;
  }
  const st = await fs.lstat(dir);
  const uid = process.geteuid?.() ?? st.uid;
  if (!st.isDirectory()) throw new HostLockError(dir, 'it is not a directory');
  if (st.uid !== uid) throw new HostLockError(dir, `it belongs to uid ${st.uid}, not to this process's uid ${uid} (remove it)`);
  if ((st.mode & 0o022) !== 0) {
    throw new HostLockError(dir, `others can write to it (mode ${(st.mode & 0o7777).toString(8)}; use a folder of mode 0700)`);
  }
}

/** A host lock: the folder it lives in, and the lock once taken. */
export interface HostLock {
  /** The lock folder (claims live there too). */
  dir: string;
  lock: FileLock;
}

/**
 * Takes the host lock `name` (`hugepages-2048kB`, `vfio-group-30`): an exclusive flock(2) on
 * `<lockDir>/<name>.lock`, waiting while another process holds it. Release it promptly.
 */
export async function acquireHostLock(name: string, options: SysfsOptions & HostLockOptions = {}): Promise<HostLock> {
  const dir = await hostLockDir(options);
  const timeoutMs = options.lockTimeoutMs === undefined ? DEFAULT_TIMEOUT_MS : integer(options.lockTimeoutMs, 'lockTimeoutMs', 0, 2 ** 31 - 1);
  // The folder inside a generated tree is made only in a tree that exists; the others with their parents.
  await ensureLockDir(dir, options.lockDir !== undefined || dir === DEFAULT_HOST_LOCK_DIR);
  const lock = await FileLock.acquire(path.join(dir, `${name}.lock`), {
    timeoutMs,
    ...(options.signal === undefined ? {} : { signal: options.signal }),
  });
  return { dir, lock };
}

/** The lock options to keep for a later release (no AbortSignal: it belongs to the call that made them). */
export function keptLockOptions(options: HostLockOptions): HostLockOptions {
  return {
    ...(options.lockDir === undefined ? {} : { lockDir: options.lockDir }),
    ...(options.lockTimeoutMs === undefined ? {} : { lockTimeoutMs: options.lockTimeoutMs }),
  };
}
