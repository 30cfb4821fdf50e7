/**
 * Path operations in a directory tree that someone else may change: the one module through which
 * vmpod touches the sandbox's shared tree (the guest writes what it shares with vmpod, and could
 * rename a folder and put a symlink in its place between two host steps).
 *
 * Everything works on file descriptors: a {@link Dir} is a directory held open; below it, every
 * lookup uses `openat2(2)` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`
 * and, unless told, `RESOLVE_NO_XDEV` (no mount crossed); binds are made with the new mount API
 * on fds (`open_tree`, `mount_setattr`, `move_mount`); removals check the recorded identity
 * (device and inode) first; unmounts go through the fd of the mount's root after checking its
 * mount id; recursive removal never follows a symlink nor enters another mount.
 *
 * @internal
 * @module
 */
import fs from 'node:fs/promises';
import { InvalidArgumentError, SystemError } from '../errors.js';
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
}

/**
 * Bind-mounts host path `source` (a directory or a file, with the mounts below it) on `target`:
 * a detached copy of its mount tree (`open_tree OPEN_TREE_CLONE|AT_RECURSIVE`) gets its
 * attributes on every mount of the tree at once (`mount_setattr AT_RECURSIVE`: read-only all the
 * way down) before it is attached on the directory (or file) `target` holds (`move_mount`), so no
 * moment exists where it is attached writable. Returns the new mount's id.
 *
 * Equivalent: `mount --rbind -o ro,nosuid,nodev SOURCE TARGET` (made recursively read-only).
 */
export async function bindMount(source: string, target: Dir | TargetFile, attributes: BindAttributes): Promise<number> {
  if (!source.startsWith('/')) throw new InvalidArgumentError('source', `${source} is not absolute`);
  const c = native().pathConstants;
  const tree = await callNative((n) => n.openTree(c.AT_FDCWD, source, true));
  try {
    const set =
      (attributes.readOnly ? c.MOUNT_ATTR_RDONLY : 0) |
      (attributes.nosuid === false ? 0 : c.MOUNT_ATTR_NOSUID) |
      (attributes.nodev === false ? 0 : c.MOUNT_ATTR_NODEV) |
      (attributes.noexec === true ? c.MOUNT_ATTR_NOEXEC : 0);
    if (set !== 0) await callNative((n) => n.mountSetattr(tree, true, set, 0));
    const { mntId } = await callNative((n) => n.statAt(tree, ''));
    await callNative((n) => n.moveMount(tree, target.fd));
    return mntId;
  } finally {
    native().closeFd(tree);
  }
}

/** A regular file held open (`O_PATH`) as a bind target. */
export class TargetFile {
  private constructor(readonly fd: number) {}

  /** Opens the regular file `name` of `dir` (no symlink, no mount crossing). */
  static async open(dir: Dir, name: string): Promise<TargetFile> {
    const c = native().pathConstants;
    const fd = await callNative((n) => n.openAt(dir.fd, component(name), c.O_PATH | c.O_NOFOLLOW, beneath(false)));
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
    mounts.push({ id: Number(f[0]), parent: Number(f[1]), mountPoint: unescapeMountField(f[4]!) });
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
