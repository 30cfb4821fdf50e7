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
 *   `vfio-group-<N>.json` (see `bindVfio`);
 * - next to `hugepages-<kB>kB.lock`, the ledger of that size's reservations
 *   `hugepages-<kB>kB.json` (see `reserveHugepages`).
 *
 * Claims and ledgers are written only under their lock. The hugepage ledger is replaced at once
 * ({@link writeHostFile}: a temp file, fsync, rename) and names processes by pid and start time
 * ({@link processStartTime}), so that a pid the kernel gave to a later process is not taken for
 * the one that made a reservation ({@link processAlive}).
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
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { InvalidArgumentError } from '../errors.js';
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

/**
 * Writes a file of the lock folder at once, readable by this user only: a new temp file next to
 * it (`O_EXCL`, mode 0600), fsync, rename over the file, fsync of the folder. A reader sees the
 * old content or the new, never a part, and a crash leaves at most a `.<name>.*.tmp` file behind.
 *
 * Shell equivalent: `T=$(mktemp DIR/.NAME.XXXXXX.tmp) && cat > $T && sync $T && mv $T DIR/NAME && sync DIR`.
 */
export async function writeHostFile(file: string, text: string): Promise<void> {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  const handle = await fs.open(tmp, 'wx', 0o600);
  try {
    try {
      await handle.writeFile(text);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.rename(tmp, file);
  } catch (error) {
    await fs.rm(tmp, { force: true }).catch(() => undefined);
    throw error;
  }
  const folder = await fs.open(dir, 'r');
  try {
    await folder.sync();
  } finally {
    await folder.close();
  }
}

/** What `/proc/PID/stat` says of a process: its state letter and its start time. */
async function procStat(pid: number): Promise<{ state: string; start: number } | undefined> {
  let text: string;
  try {
    text = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // `PID (COMM) STATE PPID ...`: COMM may hold spaces and parentheses, so split after the last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const start = Number(fields[19]); // field 22 of the line (fields[0] is field 3)
  if (fields[0] === undefined || !Number.isSafeInteger(start)) return undefined;
  return { state: fields[0], start };
}

/**
 * When a process started, in clock ticks after boot (field 22 of `/proc/PID/stat`,
 * `starttime`); undefined when there is no such process. With the pid it names one process for
 * good: the kernel reuses pids, never a (pid, start time) pair.
 *
 * Shell equivalent: `sed 's/.*) //' /proc/PID/stat | cut -d' ' -f20`.
 */
export async function processStartTime(pid: number): Promise<number | undefined> {
  return (await procStat(integer(pid, 'pid', 1, 2 ** 22)))?.start;
}

/**
 * Whether the process `pid` that started at `startTime` (see {@link processStartTime}) still
 * runs: false when the pid is free, names a later process (another start time), or a zombie (it
 * has exited; its locks are gone). A `startTime` of 0 (unknown) compares the pid alone.
 */
export async function processAlive(pid: number, startTime: number): Promise<boolean> {
  if (!Number.isSafeInteger(pid) || pid < 1) return false;
  const stat = await procStat(pid);
  if (stat === undefined || stat.state === 'Z' || stat.state === 'X') return false;
  return startTime === 0 || stat.start === startTime;
}

let self: Promise<{ pid: number; pidStart: number }> | undefined;

/** This process: its pid and start time (0 when `/proc` cannot tell). */
export function currentProcess(): Promise<{ pid: number; pidStart: number }> {
  self ??= procStat(process.pid).then((s) => ({ pid: process.pid, pidStart: s?.start ?? 0 }));
  return self;
}

/** Checks an owner for a claim file: 1 to 128 printable ASCII characters (a sandbox id, say). */
export function claimOwner(value: unknown, field: string): string {
  if (typeof value !== 'string' || !/^[\x20-\x7e]{1,128}$/u.test(value)) {
    throw new InvalidArgumentError(field, `${JSON.stringify(value)} is not an owner (1 to 128 printable ASCII characters)`);
  }
  return value;
}

/** Checks a claim id: 1 to 128 of `[A-Za-z0-9_.:-]` (a UUID, or `<sandbox id>:hugepages`). */
export function claimId(value: unknown, field: string): string {
  if (typeof value !== 'string' || !/^[A-Za-z0-9_.:-]{1,128}$/u.test(value)) {
    throw new InvalidArgumentError(field, `${JSON.stringify(value)} is not a claim id (1 to 128 of [A-Za-z0-9_.:-])`);
  }
  return value;
}
