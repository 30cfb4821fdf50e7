/**
 * Path operations in a directory tree that someone else may change: the one module through which
 * vmpod touches the sandbox's shared tree (the guest writes what it shares with vmpod, and could
 * rename a folder and put a symlink in its place between two host steps).
 *
 * Everything works on file descriptors: a {@link Dir} is a directory held open; below it, every
 * lookup uses `openat2(2)` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`
 * and, unless told, `RESOLVE_NO_XDEV` (no mount crossed); binds are made with the new mount API
 * on fds (`open_tree`, `mount_setattr`, `move_mount`; idmapped with the fd of a user namespace
 * made for the purpose by {@link withUserNamespace} when asked); removals check the recorded identity
 * (device and inode) first; unmounts go through the fd of the mount's root after checking its
 * mount id; recursive removal never follows a symlink nor enters another mount.
 *
 * @internal
 * @module
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fsSync from 'node:fs';
import fs from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { AddonError, InvalidArgumentError, SystemError, TimeoutError, VmpodError } from '../errors.js';
import { native, type NativeStat } from '../native.js';
import { callNative } from '../native-call.js';

/** Who a file is: what {@link Dir.remove} checks before removing it. */
export interface FileIdentity {
  dev: number;
  ino: number;
}

/** What {@link Dir.stat} reports. */
export type Stat = NativeStat;

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

/** True for a directory's st_mode. */
export function isDirectoryMode(mode: number): boolean {
  return (mode & S_IFMT) === S_IFDIR;
}

function component(name: string, field = 'name'): string {
  if (typeof name !== 'string' || name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0')) {
    throw new InvalidArgumentError(field, `${JSON.stringify(name)} is not one path component`);
  }
  return name;
}

/** Splits a relative path into components, refusing `..`, `.`, empty parts and absolute paths. */
export function components(relative: string, field = 'path'): string[] {
  if (typeof relative !== 'string' || relative.startsWith('/')) throw new InvalidArgumentError(field, `${JSON.stringify(relative)} is not a relative path`);
  return relative.split('/').map((part) => component(part, field));
}

function beneath(crossMounts: boolean): number {
  const c = native().pathConstants;
  return c.RESOLVE_BENEATH | c.RESOLVE_NO_SYMLINKS | c.RESOLVE_NO_MAGICLINKS | (crossMounts ? 0 : c.RESOLVE_NO_XDEV);
}

/** A directory held open (`O_PATH`); close it when done. */
export class Dir {
  #fd: number;

  private constructor(
    fd: number,
    /** Its path when it was opened, for messages only: nothing is looked up by it again. */
    readonly path: string,
  ) {
    this.#fd = fd;
  }

  /**
   * Opens the directory at absolute `path`, which must not be a symlink itself (`O_NOFOLLOW`).
   * The components above it are the host's own (e.g. the state directory), not another party's.
   */
  static async open(path: string): Promise<Dir> {
    if (!path.startsWith('/')) throw new InvalidArgumentError('path', `${path} is not absolute`);
    const c = native().pathConstants;
    const fd = await callNative((n) => n.openAt(c.AT_FDCWD, path, c.O_PATH | c.O_DIRECTORY | c.O_NOFOLLOW, 0));
    return new Dir(fd, path);
  }

  /** The file descriptor (valid until {@link close}). */
  get fd(): number {
    if (this.#fd < 0) throw new InvalidArgumentError('dir', `${this.path} is closed`);
    return this.#fd;
  }

  /**
   * Opens the directory `relative` below this one, refusing symlinks, `..` and (unless
   * `crossMounts`) any mount crossed on the way, the last component included.
   */
  async open(relative: string, options: { crossMounts?: boolean } = {}): Promise<Dir> {
    components(relative);
    const c = native().pathConstants;
    const fd = await callNative((n) => n.openAt(this.fd, relative, c.O_PATH | c.O_DIRECTORY, beneath(options.crossMounts === true)));
    return new Dir(fd, `${this.path}/${relative}`);
  }

  /** The directory `relative` below this one, made where missing (mode 0700 unless told); never through a symlink or another mount. */
  async mkdirp(relative: string, mode = 0o700): Promise<Dir> {
    let dir: Dir = this;
    for (const part of components(relative)) {
      let next: Dir;
      try {
        next = await dir.open(part);
      } catch (error) {
        if (!(error instanceof SystemError && error.errnoName === 'ENOENT')) {
          if (dir !== this) dir.close();
          throw error;
        }
        await callNative((n) => n.mkdirAt(dir.fd, part, mode)).catch((e: unknown) => {
          if (!(e instanceof SystemError && e.errnoName === 'EEXIST')) throw e;
        });
        next = await dir.open(part);
      }
      if (dir !== this) dir.close();
      dir = next;
    }
    return dir;
  }

  /** Makes directory `name` (one component) here; fails when anything is there. */
  async mkdir(name: string, mode = 0o700): Promise<FileIdentity> {
    await callNative((n) => n.mkdirAt(this.fd, component(name), mode));
    return identityOf(await this.stat(name));
  }

  /** Makes an empty regular file `name` here; fails when anything is there. */
  async createFile(name: string, mode = 0o600): Promise<FileIdentity> {
    await callNative((n) => n.createFileAt(this.fd, component(name), mode));
    return identityOf(await this.stat(name));
  }

  /** `statx` of `name` here (without following it), or of this directory for `''`. */
  async stat(name = ''): Promise<Stat> {
    return callNative((n) => n.statAt(this.fd, name === '' ? '' : component(name)));
  }

  /** `stat`, or undefined when `name` does not exist. */
  async statIfExists(name: string): Promise<Stat | undefined> {
    return this.stat(name).catch((error: unknown) => {
      if (error instanceof SystemError && error.errnoName === 'ENOENT') return undefined;
      throw error;
    });
  }

  /**
   * Removes file or empty directory `name` if it is still `identity` (else a SystemError
   * `ESTALE`: something replaced it). A missing entry counts as removed.
   */
  async remove(name: string, identity: FileIdentity, kind: 'dir' | 'file'): Promise<void> {
    await callNative((n) => n.unlinkAt(this.fd, component(name), kind === 'dir', identity.dev, identity.ino)).catch((error: unknown) => {
      if (!(error instanceof SystemError && error.errnoName === 'ENOENT')) throw error;
    });
  }

  /**
   * `rm -r` of `name` here: never follows a symlink, never enters another mount (a SystemError
   * `EBUSY` names what is still mounted inside; nothing under a mount is touched). Missing is fine.
   */
  async removeTree(name: string): Promise<void> {
    await callNative((n) => n.removeTreeAt(this.fd, component(name)));
  }

  /** Closes the fd. Idempotent. */
  close(): void {
    if (this.#fd >= 0) native().closeFd(this.#fd);
    this.#fd = -1;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function identityOf(stat: Stat): FileIdentity {
  return { dev: stat.dev, ino: stat.ino };
}

/** Mount attributes of a bind, applied to every mount of its tree. */
export interface BindAttributes {
  readOnly: boolean;
  /** Default true: set-user-ID bits and device files are inert through the bind. */
  nosuid?: boolean;
  nodev?: boolean;
  noexec?: boolean;
  /**
   * Idmap every mount of the tree with the maps of this user namespace (an fd from
   * {@link withUserNamespace}): a file of host id `k` is seen through the bind as
   * `map(k)` (with `0 UID COUNT`: host 0..COUNT-1 as UID..UID+COUNT-1), and what is written
   * through it as `map(x)` is stored as `x`. Each mount's filesystem must support it (ext4,
   * xfs, btrfs, tmpfs do; overlayfs, FUSE, NFS do not): else {@link IdmapUnsupportedError}.
   */
  idmap?: { usernsFd: number };
}

/**
 * A source whose mount tree cannot be idmapped (`mount_setattr(MOUNT_ATTR_IDMAP)` refused it:
 * EINVAL when a filesystem of the tree does not support idmapped mounts, e.g. overlayfs; EPERM
 * when a mount of it is idmapped already). Nothing was mounted.
 */
export class IdmapUnsupportedError extends InvalidArgumentError {
  constructor(
    /** The bind's source. */
    readonly source: string,
    /** `FSTYPE at MOUNTPOINT` of the mounts of the source's tree, as far as /proc/self/mountinfo tells. */
    readonly filesystems: readonly string[],
    errnoName: string,
    options: { cause?: unknown } = {},
  ) {
    super(
      'source',
      `${source} cannot be shared through an idmapped mount (mount_setattr MOUNT_ATTR_IDMAP: ${errnoName}): ` +
        `${errnoName === 'EPERM' ? 'a mount of it is idmapped already' : 'a filesystem of its tree does not support idmapped mounts (overlayfs, FUSE and NFS do not)'}` +
        `${filesystems.length > 0 ? `; its mounts: ${filesystems.join(', ')}` : ''}`,
      options,
    );
  }
}

/**
 * A detached copy of the mount tree of a host path (`open_tree OPEN_TREE_CLONE|AT_RECURSIVE`)
 * with its attributes set on every mount of it (`mount_setattr AT_RECURSIVE`), not attached
 * anywhere yet: {@link attach} it, and {@link close} it in any case (a tree never attached
 * vanishes with its fd, also when this process dies, so making one changes nothing on the host).
 */
export class DetachedTree {
  #fd: number;
  #attached = false;

  private constructor(
    fd: number,
    readonly source: string,
    /** The id its root mount keeps once attached. */
    readonly mntId: number,
  ) {
    this.#fd = fd;
  }

  /** Clones the tree at absolute `source` and applies `attributes` to all of it. */
  static async clone(source: string, attributes: BindAttributes): Promise<DetachedTree> {
    if (!source.startsWith('/')) throw new InvalidArgumentError('source', `${source} is not absolute`);
    const c = native().pathConstants;
    if (attributes.idmap && typeof c.MOUNT_ATTR_IDMAP !== 'number') {
      throw new AddonError('the native addon has no MOUNT_ATTR_IDMAP: it is older than this code; rebuild it (npm run build)');
    }
    const tree = await callNative((n) => n.openTree(c.AT_FDCWD, source, true));
    try {
      const set =
        (attributes.readOnly ? c.MOUNT_ATTR_RDONLY : 0) |
        (attributes.nosuid === false ? 0 : c.MOUNT_ATTR_NOSUID) |
        (attributes.nodev === false ? 0 : c.MOUNT_ATTR_NODEV) |
        (attributes.noexec === true ? c.MOUNT_ATTR_NOEXEC : 0);
      if (attributes.idmap) {
        const usernsFd = attributes.idmap.usernsFd;
        await callNative((n) => n.mountSetattr(tree, true, set | c.MOUNT_ATTR_IDMAP, 0, usernsFd)).catch(async (error: unknown) => {
          if (error instanceof SystemError && (error.errnoName === 'EINVAL' || error.errnoName === 'EPERM')) {
            throw new IdmapUnsupportedError(source, await filesystemsOf(source), error.errnoName, { cause: error });
          }
          throw error;
        });
      } else if (set !== 0) {
        await callNative((n) => n.mountSetattr(tree, true, set, 0));
      }
      const { mntId } = await callNative((n) => n.statAt(tree, ''));
      return new DetachedTree(tree, source, mntId);
    } catch (error) {
      native().closeFd(tree);
      throw error;
    }
  }

  /**
   * Attaches the tree on the directory (or file) `target` holds (`move_mount`, by fds); returns
   * its mount id. Once: a second move_mount would move the attached mount away.
   */
  async attach(target: Dir | TargetFile): Promise<number> {
    if (this.#fd < 0 || this.#attached) throw new InvalidArgumentError('tree', `the detached tree of ${this.source} is ${this.#attached ? 'attached already' : 'closed'}`);
    const fd = this.#fd;
    this.#attached = true;
    await callNative((n) => n.moveMount(fd, target.fd));
    return this.mntId;
  }

  /** Closes the fd (an unattached tree goes with it). Idempotent. */
  close(): void {
    if (this.#fd >= 0) native().closeFd(this.#fd);
    this.#fd = -1;
  }
}

/**
 * Bind-mounts host path `source` (a directory or a file, with the mounts below it) on `target`:
 * a detached copy of its mount tree (`open_tree OPEN_TREE_CLONE|AT_RECURSIVE`) gets its
 * attributes on every mount of the tree at once (`mount_setattr AT_RECURSIVE`: read-only all the
 * way down, and idmapped when asked) before it is attached on the directory (or file) `target`
 * holds (`move_mount`), so no moment exists where it is attached writable, or unmapped. Returns
 * the new mount's id.
 *
 * Equivalent: `mount --rbind -o ro,nosuid,nodev SOURCE TARGET` (made recursively read-only;
 * with `idmap`, `mount --rbind -o X-mount.idmap=/proc/PID/ns/user`, util-linux 2.39).
 */
export async function bindMount(source: string, target: Dir | TargetFile, attributes: BindAttributes): Promise<number> {
  const tree = await DetachedTree.clone(source, attributes);
  try {
    return await tree.attach(target);
  } finally {
    tree.close();
  }
}

/** A regular file held open (`O_PATH`) as a bind target. */
export class TargetFile {
  private constructor(readonly fd: number) {}

  /**
   * Opens the regular file `name` of `dir` (no symlink, no mount crossing). Anything else there is
   * refused (`O_PATH | O_NOFOLLOW` would open a symlink, a fifo or a socket as well): a symlink
   * with `ELOOP`, any other kind with `EINVAL`.
   */
  static async open(dir: Dir, name: string): Promise<TargetFile> {
    const c = native().pathConstants;
    const fd = await callNative((n) => n.openAt(dir.fd, component(name), c.O_PATH | c.O_NOFOLLOW, beneath(false)));
    let mode: number;
    try {
      mode = (await callNative((n) => n.statAt(fd, ''))).mode;
    } catch (error) {
      native().closeFd(fd);
      throw error;
    }
    if ((mode & S_IFMT) !== S_IFREG) {
      native().closeFd(fd);
      const symlink = (mode & S_IFMT) === S_IFLNK;
      throw new SystemError('openat2', symlink ? 40 : 22, symlink ? 'ELOOP' : 'EINVAL', `${name} is not a regular file (mode ${mode.toString(8)})`);
    }
    return new TargetFile(fd);
  }

  close(): void {
    native().closeFd(this.fd);
  }
}

/** One line of /proc/self/mountinfo. */
export interface MountInfo {
  id: number;
  parent: number;
  /** Mount point, octal escapes decoded. */
  mountPoint: string;
  /** Filesystem type (the field after ` - `). */
  fstype: string;
}

/** Decodes the octal escapes (`\040` for a space) of /proc/self/mountinfo fields. */
function unescapeMountField(field: string): string {
  return field.replace(/\\([0-7]{3})/gu, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

/** The mounts of this process's mount namespace. */
export async function mountTable(): Promise<MountInfo[]> {
  const text = await fs.readFile('/proc/self/mountinfo', 'utf8');
  const mounts: MountInfo[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f.length < 5) continue;
    const separator = f.indexOf('-', 6);
    mounts.push({ id: Number(f[0]), parent: Number(f[1]), mountPoint: unescapeMountField(f[4]!), fstype: separator > 0 ? unescapeMountField(f[separator + 1] ?? '') : '' });
  }
  return mounts;
}

/** How {@link unmountAt} ended. */
export type UnmountOutcome = 'unmounted' | 'absent';

/**
 * Unmounts mount `mntId`, whose mount point is `relative` below `dir`: opens the root of what is
 * mounted there (no symlink, no `..`), checks it is that mount, and detaches it through the fd.
 * Then checks the mount is really gone from the mount table. `absent` when nothing with that id is
 * mounted there any more (released earlier, e.g. before a crash). Throws when a mount with that id
 * sits elsewhere, or when another mount covers it.
 */
export async function unmountAt(dir: Dir, relative: string, mntId: number, expectedPoint: string): Promise<UnmountOutcome> {
  const before = (await mountTable()).find((m) => m.id === mntId);
  if (!before || before.mountPoint !== expectedPoint) return 'absent'; // the id is free, or reused by another mount elsewhere
  components(relative);
  // The root of what is mounted there now (a directory or a file), reached without symlinks.
  const c = native().pathConstants;
  const rootFd = await callNative((n) => n.openAt(dir.fd, relative, c.O_PATH | c.O_NOFOLLOW, beneath(true)));
  try {
    await callNative((n) => n.unmountFd(rootFd, mntId));
  } finally {
    native().closeFd(rootFd);
  }
  const after = (await mountTable()).find((m) => m.id === mntId && m.mountPoint === expectedPoint);
  if (after) throw new SystemError('umount2', 16, 'EBUSY', `mount ${mntId} at ${expectedPoint} is still mounted after the unmount`);
  return 'unmounted';
}

/**
 * `FSTYPE at MOUNTPOINT` for the mount that holds host path `source` and each mount below it, for
 * messages (best effort: paths as /proc/self/mountinfo shows them; empty when unknown).
 */
async function filesystemsOf(source: string): Promise<string[]> {
  try {
    const c = native().pathConstants;
    const fd = await callNative((n) => n.openAt(c.AT_FDCWD, source, c.O_PATH, 0));
    let mntId: number;
    try {
      mntId = (await callNative((n) => n.statAt(fd, ''))).mntId;
    } finally {
      native().closeFd(fd);
    }
    const table = await mountTable();
    const real = await fs.realpath(source);
    const below = table.filter((m) => m.mountPoint.startsWith(`${real}/`) || (m.mountPoint === real && m.id !== mntId));
    return [...table.filter((m) => m.id === mntId), ...below].map((m) => `${m.fstype} at ${m.mountPoint}`);
  } catch {
    return [];
  }
}

/**
 * The id maps of a user namespace: ids 0..count-1 inside are host uids uid..uid+count-1 and host
 * gids gid..gid+count-1 (`uid_map` and `gid_map` read `0 UID COUNT`, `0 GID COUNT`).
 */
export interface IdMap {
  readonly uid: number;
  readonly gid: number;
  readonly count: number;
}

/** util-linux (Essential on Debian). */
const UNSHARE = '/usr/bin/unshare';

/** A user namespace could not be made (user namespaces turned off, unshare missing, a map refused). */
export class UserNamespaceError extends VmpodError {
  constructor(message: string, options: { cause?: unknown } = {}) {
    super('ERR_VMPOD_USER_NAMESPACE', message, options);
  }
}

/**
 * Calls `use` with an fd of a new user namespace mapped as `map` says, and closes the fd when
 * `use` settles. For idmapped mounts ({@link BindAttributes.idmap}): `mount_setattr` takes the
 * namespace's maps, and the mount keeps its own reference to the namespace for as long as it
 * exists, so nothing else needs to hold it afterwards.
 *
 * Why a new namespace for every use, rather than one kept for a sandbox's lifetime: what an
 * idmapped mount takes is the map, not the namespace's identity (two namespaces with the same
 * `0 UID COUNT` map idmap alike). A namespace held open would have to live in some process and be
 * reachable by every later process that binds into the share (containers are created minutes
 * later, possibly by another Node process): a holder to record, find again and release. A new
 * namespace per bind, made from the map the record holds, needs none of that: nothing outlives
 * this call. The holder process exists only inside it (it is told to exit as soon as the fd is
 * open, and waited for) and ends by itself if this process dies: its stdin is a pipe whose write
 * end only this process holds (close-on-exec), and it exits at end of file.
 *
 * Equivalent: `unshare --user sh -c 'read _' &`, `echo 0 UID COUNT > /proc/$!/uid_map` (and
 * `0 GID COUNT` to gid_map), `exec 9</proc/$!/ns/user`, then the holder's stdin is closed. Root
 * (CAP_SETUID and CAP_SETGID here) may map any range.
 */
export async function withUserNamespace<T>(map: IdMap, use: (usernsFd: number) => Promise<T>, options: { timeoutMs?: number } = {}): Promise<T> {
  for (const key of ['uid', 'gid', 'count'] as const) {
    const max = key === 'count' ? 2 ** 32 - 1 - Math.max(map.uid, map.gid) : 2 ** 32 - 2;
    if (!Number.isInteger(map[key]) || map[key] < 1 || map[key] > max) throw new InvalidArgumentError(`idmap.${key}`, `${JSON.stringify(map[key])} is not an integer in [1, ${max}]`);
  }
  const fd = await openUserNamespace(map, options.timeoutMs ?? 10_000);
  try {
    return await use(fd);
  } finally {
    native().closeFd(fd);
  }
}

async function openUserNamespace(map: IdMap, timeoutMs: number): Promise<number> {
  const [read, write] = native().pipe();
  let child: ChildProcess;
  try {
    child = spawn(UNSHARE, ['--user', '--', '/bin/sh', '-c', 'read -r _'], {
      stdio: [read, 'ignore', 'pipe'],
      env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' },
    });
  } catch (error) {
    native().closeFd(write);
    throw new UserNamespaceError(`cannot start ${UNSHARE}: ${(error as Error).message}`, { cause: error });
  } finally {
    native().closeFd(read);
  }
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => {
    if (stderr.length < 1024) stderr += d;
  });
  let exited: string | undefined;
  const gone = new Promise<void>((resolve) =>
    child.once('exit', (code, signal) => {
      exited = signal ?? `exit code ${code ?? 'unknown'}`;
      resolve();
    }),
  );
  // The holder goes in any case: its stdin closed (it exits at end of file), waited for, killed if it lingers.
  const release = async (): Promise<void> => {
    native().closeFd(write);
    if (exited !== undefined) return;
    if (await Promise.race([gone.then(() => true), sleep(2000).then(() => false)])) return;
    child.kill('SIGKILL');
    await gone;
  };
  let fd: number | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', (error) => reject(new UserNamespaceError(`cannot start ${UNSHARE}: ${error.message}`, { cause: error })));
    });
    const pid = child.pid!;
    const own = fsSync.readlinkSync('/proc/self/ns/user');
    const deadline = Date.now() + timeoutMs;
    let id: string | undefined;
    for (;;) {
      if (exited !== undefined) throw new UserNamespaceError(`${UNSHARE} --user exited (${exited}) before its namespace was mapped: ${stderr.trim() || 'no message'} (are user namespaces enabled?)`);
      try {
        id = fsSync.readlinkSync(`/proc/${pid}/ns/user`, { encoding: 'utf8' });
      } catch {
        id = undefined; // gone: its exit is seen at the next turn
      }
      if (id !== undefined && id !== own) break;
      if (Date.now() > deadline) throw new UserNamespaceError(`${UNSHARE} --user made no user namespace`, { cause: new TimeoutError('user namespace', timeoutMs) });
      await sleep(2);
    }
    try {
      fsSync.writeFileSync(`/proc/${pid}/uid_map`, `0 ${map.uid} ${map.count}\n`);
      fsSync.writeFileSync(`/proc/${pid}/gid_map`, `0 ${map.gid} ${map.count}\n`);
    } catch (error) {
      throw new UserNamespaceError(`cannot map ids ${map.uid}:${map.gid} (${map.count}) into a user namespace: ${(error as Error).message}`, { cause: error });
    }
    fd = fsSync.openSync(`/proc/${pid}/ns/user`, fsSync.constants.O_RDONLY);
    // The fd is the namespace mapped above: same inode as the one read while the holder lived, and
    // the holder still lives (our unreaped child: its pid cannot have been reused), with the maps asked.
    const inode = /^user:\[(\d+)\]$/u.exec(id ?? '')?.[1];
    const maps = [fsSync.readFileSync(`/proc/${pid}/uid_map`, 'utf8'), fsSync.readFileSync(`/proc/${pid}/gid_map`, 'utf8')].map((m) => m.trim().split(/\s+/u).join(' '));
    if (exited !== undefined || inode === undefined || String(fsSync.fstatSync(fd).ino) !== inode || maps[0] !== `0 ${map.uid} ${map.count}` || maps[1] !== `0 ${map.gid} ${map.count}`) {
      throw new UserNamespaceError(`the user namespace of ${UNSHARE} (pid ${pid}) changed while it was mapped`);
    }
    return fd;
  } catch (error) {
    if (fd !== undefined) fsSync.closeSync(fd);
    throw error;
  } finally {
    await release();
  }
}
