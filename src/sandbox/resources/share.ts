/**
 * The share: the tree of the sandbox's shared filesystem, and every host operation on it. Host
 * directories (container rootfs, bind sources, directory
 * volumes) exported to the guest by virtiofsd (`-device vhost-user-fs-pci,tag=vmpod`), mounted by
 * the agent in the guest.
 *
 * The guest is root over what it is given, so the host never acts on a path the guest can
 * change. The share's own tree (the folders vmpod makes to mount things on) is a small tmpfs of
 * its own, seen twice: read-write at `DIR/share`, where only the host makes and removes folders,
 * and read-only at `DIR/shared` (a bind of it, `ro,nosuid,nodev,noexec`, made a shared mount),
 * which is what virtiofsd exports. The guest can write inside what is bound into the share (a
 * read-write rootfs, a volume), never the tree itself: it cannot rename or replace a folder the
 * host made, nor fill host memory through it. Binds are made on top of `DIR/shared` (they
 * propagate into virtiofsd's mount namespace, a slave of the host's, so they appear in the guest
 * at once), recursively read-only where asked, always nosuid and nodev. And every operation in
 * the tree goes through src/host/tree.ts, by fd (no symlink followed, no mount crossed,
 * identities and mount ids checked), so even a guest that could write the tree could not turn a
 * host step against another path.
 *
 * Equivalent (setup): `mount -t tmpfs -o size=1m,nr_inodes=16384,mode=0755 tmpfs DIR/share;
 * mount --bind DIR/share DIR/shared; mount -o remount,bind,ro,nosuid,nodev,noexec DIR/shared;
 * mount --make-shared DIR/shared; virtiofsd -o source=DIR/shared`.
 *
 * With `sharedFsUser` ({@link SharedFsState.tree} `idmap`), virtiofsd runs as an unprivileged
 * host uid in a user namespace mapping `0 UID COUNT` (src/hypervisor/virtiofsd.ts), and every
 * mount it exports is idmapped with that same map, so that it serves files with their real owners
 * (host 0 is its 0, host 1000 its 1000; without the idmap host root's files would be 65534 to it,
 * and guest root could not write them). The read-only view is then not a bind remounted read-only
 * but a clone of the tree made read-only and idmapped before it is attached (an idmapping can only
 * be given to a detached mount), and so is every bind: a plain bind on an idmapped view arrives
 * unmapped. The map is recorded with the tree before the view is made, so that every later bind,
 * from any process, idmaps with the same map: each makes a user namespace of its own with it
 * ({@link withUserNamespace}; the map matters, not which namespace), which lives on only as the
 * mount's reference. A source that cannot be idmapped (overlayfs) is refused before anything is
 * recorded. Equivalent of the view: `mount --bind -o X-mount.idmap='0 UID COUNT'
 * DIR/share DIR/shared` (util-linux 2.39), read-only, nosuid, nodev, noexec, made shared.
 *
 * @internal
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { runAll, throwFailures } from '../../cleanup.js';
import { InvalidArgumentError, SystemError } from '../../errors.js';
import { mount, unmount } from '../../devices/mount.js';
import { DetachedTree, Dir, TargetFile, bindMount, mountTable, unmountAt, withUserNamespace, type FileIdentity, type IdMap } from '../../host/tree.js';
import { isProcessIdentity } from '../../host/process.js';
import { checkUser, type VirtiofsdHandle } from '../../hypervisor/virtiofsd.js';

/** The virtio-fs tag of the sandbox's shared directory. */
export const SHARED_FS_TAG = 'vmpod';

/** Key of the share's state in the sandbox record. */
export const SHARED_FS_KIND = 'sharedFs';

/** The folders of the share's tree. */
export type ShareTop = 'rootfs' | 'mounts' | 'volumes';
const TOPS: readonly ShareTop[] = ['rootfs', 'mounts', 'volumes'];

/** Size of the tree's tmpfs: folders only, the host's. */
const TREE_OPTIONS = 'size=1m,nr_inodes=16384,mode=0755';

/** One bind into the share, as the record keeps it. */
export interface ShareBind {
  /** `TOP/NAME` below the share (NAME is never used twice: the guest keeps its view of a path). */
  path: string;
  source: string;
  readOnly: boolean;
  file: boolean;
  /** The folder (or file) made to mount on, recorded right after it was made. */
  point?: FileIdentity;
  /** The mount, recorded right after it was attached. */
  mntId?: number;
  /** For rootfs binds shared by the containers of one bundle: `DEV-INO-ro|rw` of the source. */
  key?: string;
  /** Containers using it. */
  users?: string[];
}

/** The persisted state of the share. */
export interface SharedFsState {
  /**
   * The tree's two mounts: recorded (`made`) before the first mount, then their ids. `idmap`
   * (recorded with `made`): the exported view and every bind are idmapped with this map.
   */
  tree?: { made: true; rwMntId?: number; roMntId?: number; idmap?: IdMap };
  /** By name (the last component of `path`). */
  binds: Record<string, ShareBind>;
  virtiofsd?: VirtiofsdHandle;
}

function isIdentity(v: unknown): v is FileIdentity {
  const o = v as Partial<FileIdentity> | undefined;
  return typeof o === 'object' && o !== null && Number.isFinite(o.dev) && Number.isFinite(o.ino);
}

const BIND_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/u;

/** Parses the share's state from a record, keeping only well-formed entries. */
export function parseSharedFsState(value: unknown): SharedFsState {
  const v = (typeof value === 'object' && value !== null ? value : {}) as Record<string, unknown>;
  const state: SharedFsState = { binds: {} };
  const tree = v['tree'] as Record<string, unknown> | undefined;
  if (tree && typeof tree === 'object' && tree['made'] === true) {
    state.tree = { made: true };
    if (Number.isInteger(tree['rwMntId'])) state.tree.rwMntId = tree['rwMntId'] as number;
    if (Number.isInteger(tree['roMntId'])) state.tree.roMntId = tree['roMntId'] as number;
    if (tree['idmap'] !== undefined) {
      // A damaged map must not turn into "no idmap" (binds would arrive unmapped): an impossible one makes binds fail instead.
      try {
        state.tree.idmap = checkUser(tree['idmap'], 'idmap');
      } catch {
        state.tree.idmap = { uid: 0, gid: 0, count: 0 };
      }
    }
  }
  const binds = v['binds'];
  if (typeof binds === 'object' && binds !== null) {
    for (const [name, b] of Object.entries(binds as Record<string, Partial<ShareBind>>)) {
      if (!BIND_NAME.test(name) || typeof b !== 'object' || b === null) continue;
      const top = b.path?.split('/')[0];
      if (typeof b.path !== 'string' || b.path !== `${top}/${name}` || !TOPS.includes(top as ShareTop)) continue;
      if (typeof b.source !== 'string' || typeof b.readOnly !== 'boolean') continue;
      const bind: ShareBind = { path: b.path, source: b.source, readOnly: b.readOnly, file: b.file === true };
      if (isIdentity(b.point)) bind.point = { dev: b.point.dev, ino: b.point.ino };
      if (Number.isInteger(b.mntId)) bind.mntId = b.mntId!;
      if (typeof b.key === 'string') bind.key = b.key;
      if (Array.isArray(b.users)) bind.users = b.users.filter((u) => typeof u === 'string');
      state.binds[name] = bind;
    }
  }
  if (isProcessIdentity(v['virtiofsd']) && typeof (v['virtiofsd'] as VirtiofsdHandle).socket === 'string') state.virtiofsd = v['virtiofsd'] as VirtiofsdHandle;
  return state;
}

/** The host view of the share's tree (read-write, never exported). */
function treeDir(dir: string): string {
  return path.join(dir, 'share');
}

/** What virtiofsd exports (read-only view of the tree, with the binds on it). */
export function sharedDirOf(dir: string): string {
  return path.join(dir, 'shared');
}

/** Where the agent mounts the share in the guest. */
export function guestSharedDir(guestStateDir: string): string {
  return `${guestStateDir}/shared`;
}

/** Opens a view of the tree, checking it is the recorded mount (the sandbox folder is the host's, but a stale record must not steer us). */
async function openView(where: string, mntId: number | undefined): Promise<Dir> {
  const dir = await Dir.open(where);
  const stat = await dir.stat().catch((error: unknown) => {
    dir.close();
    throw error;
  });
  if (mntId === undefined || stat.mntId !== mntId || !stat.mountRoot) {
    dir.close();
    throw new SystemError('open', 116, 'ESTALE', `${where} is not the share's recorded mount ${mntId ?? '(none)'}`);
  }
  return dir;
}

/** Mount points (ids, topmost first) at absolute `point` whose parent is mount `parent`, or any parent when undefined. */
async function mountsAt(point: string, parent?: number): Promise<number[]> {
  const table = await mountTable();
  const ids = new Set<number>();
  // A stack: the lowest sits on `parent`, each next one on the one below.
  let below = parent;
  for (;;) {
    const next = table.find((m) => m.mountPoint === point && !ids.has(m.id) && (below === undefined || m.parent === below));
    if (!next) break;
    ids.add(next.id);
    below = next.id;
  }
  return [...ids].reverse();
}

/** The real paths of the folders bound read-write into the share: what the guest can change. */
async function guestWritableRoots(state: SharedFsState): Promise<string[]> {
  const roots: string[] = [];
  for (const bind of Object.values(state.binds)) {
    if (bind.readOnly || bind.file) continue;
    roots.push(await fs.realpath(bind.source).catch(() => path.resolve(bind.source)));
  }
  return roots;
}

/** Symbolic links followed in one resolution at most (the kernel's limit). */
const MAX_LINKS = 40;

/**
 * Resolves host path `source` as the kernel would (following its symbolic links), refusing it if
 * any name on the way is looked up in one of `roots` or below (a folder the guest can write: it
 * could put a link to any host path there, between any check and the bind). A root itself may
 * be given, as may anything reached without passing through one. Returns the resolved path.
 */
export async function resolveOutsideGuest(source: string, roots: readonly string[]): Promise<string> {
  const refuse = (dir: string, root: string): never => {
    throw new InvalidArgumentError(
      'source',
      `${source} is reached through ${dir}, inside ${root}, which is bound read-write into this sandbox: its guest could replace a folder on the way with a link to any host path; share ${root} itself, or a path outside it`,
    );
  };
  const guestRoot = (dir: string): string | undefined => roots.find((root) => dir === root || dir.startsWith(root === '/' ? '/' : `${root}/`));
  let links = 0;
  let current = '/';
  const pending = path.resolve(source).split('/').filter((part) => part !== '');
  while (pending.length > 0) {
    const part = pending.shift()!;
    if (part === '.') continue;
    const root = guestRoot(current);
    if (root !== undefined) refuse(current, root);
    if (part === '..') {
      current = path.dirname(current); // `current` has no link in it: its parent is the real one
      continue;
    }
    const next = path.join(current, part);
    const stat = await fs.lstat(next).catch((cause: unknown) => {
      throw new InvalidArgumentError('source', `${source} cannot be shared: ${(cause as Error).message}`, { cause });
    });
    if (!stat.isSymbolicLink()) {
      current = next;
      continue;
    }
    if (++links > MAX_LINKS) throw new InvalidArgumentError('source', `${source} cannot be shared: more than ${MAX_LINKS} symbolic links on the way`);
    const target = await fs.readlink(next);
    if (target.startsWith('/')) current = '/';
    pending.unshift(...target.split('/').filter((p) => p !== ''));
  }
  return current;
}

/**
 * The share's operations on its tree, for the share resource, the volumes and the containers.
 * Each change is recorded (through `update`) before it is made.
 */
export class Share {
  constructor(
    private readonly dir: string,
    private readonly update: <T>(fn: (state: SharedFsState, save: () => Promise<void>) => T | Promise<T>) => Promise<T>,
  ) {}

  /**
   * Mounts the tree (tmpfs, its read-only exported view) and makes its top folders. With
   * `idmap`, the view (and later every bind) is idmapped with it.
   */
  async setUp(idmap?: IdMap): Promise<void> {
    const rw = treeDir(this.dir);
    const ro = sharedDirOf(this.dir);
    await fs.mkdir(rw, { recursive: true, mode: 0o700 });
    await fs.mkdir(ro, { recursive: true, mode: 0o700 });
    await this.update((s) => {
      s.tree = { made: true, ...(idmap ? { idmap: { ...idmap } } : {}) };
    });
    await mount(rw, { source: 'vmpod-share', fstype: 'tmpfs', flags: ['nosuid', 'nodev', 'noexec'], data: TREE_OPTIONS });
    await mount(rw, { flags: ['private'] });
    const rwDir = await Dir.open(rw);
    try {
      const rwMntId = (await rwDir.stat()).mntId;
      await this.update((s) => {
        s.tree = { ...s.tree!, made: true, rwMntId };
      });
      for (const top of TOPS) await rwDir.mkdir(top, 0o755);
    } finally {
      rwDir.close();
    }
    let roMntId: number;
    if (idmap) {
      // Read-only and idmapped before it is attached (private: a clone of a private mount).
      const point = await Dir.open(ro);
      try {
        roMntId = await withUserNamespace(idmap, (usernsFd) => bindMount(rw, point, { readOnly: true, noexec: true, idmap: { usernsFd } }));
      } finally {
        point.close();
      }
    } else {
      await mount(ro, { source: rw, flags: ['bind'] });
      await mount(ro, { flags: ['private'] });
      await mount(ro, { flags: ['remount', 'bind', 'ro', 'nosuid', 'nodev', 'noexec'] });
      const roDir = await Dir.open(ro);
      try {
        roMntId = (await roDir.stat()).mntId;
      } finally {
        roDir.close();
      }
    }
    await this.update((s) => {
      s.tree = { ...s.tree!, roMntId };
    });
    await mount(ro, { flags: ['shared'] });
  }

  /**
   * Binds host path `source` (a directory or file) into the share at `TOP/PREFIX.RANDOM`,
   * read-only all the way down when asked, always nosuid and nodev, idmapped as the tree is;
   * returns the bind's name and its path below the share (the guest sees it at
   * `guestSharedDir/PATH`). The copy of the source's mount tree is made (and its attributes
   * set) first, before anything is recorded: a source that refuses them (an overlayfs under an
   * idmapped share: {@link IdmapUnsupportedError}) leaves nothing behind.
   */
  async bind(request: { top: ShareTop; prefix: string; source: string; readOnly: boolean; key?: string; users?: string[] }): Promise<{ name: string; path: string }> {
    const name = `${request.prefix}.${randomBytes(4).toString('hex')}`;
    if (!BIND_NAME.test(name)) throw new InvalidArgumentError('prefix', `${JSON.stringify(request.prefix)} makes a bad share name`);
    const bindPath = `${request.top}/${name}`;
    let file = false;
    // A detached copy: nothing on the host until it is attached, and gone with its fd.
    let detached: DetachedTree | undefined;
    try {
      const tree = await this.update(async (s) => {
        if (!s.tree?.roMntId || !s.tree.rwMntId) throw new InvalidArgumentError('sharedFs', 'the share is not set up');
        if (!detached) {
          // Resolved here, against the binds of now: no folder on the way may be one the guest can change.
          const source = await resolveOutsideGuest(request.source, await guestWritableRoots(s));
          const stat = await fs.stat(source).catch((cause: unknown) => {
            throw new InvalidArgumentError('source', `${request.source} cannot be shared: ${(cause as Error).message}`, { cause });
          });
          if (!stat.isDirectory() && !stat.isFile()) throw new InvalidArgumentError('source', `${request.source} is neither a directory nor a regular file`);
          file = !stat.isDirectory();
          const attributes = { readOnly: request.readOnly };
          const idmap = s.tree.idmap;
          detached = idmap
            ? await withUserNamespace(idmap, (usernsFd) => DetachedTree.clone(source, { ...attributes, idmap: { usernsFd } }))
            : await DetachedTree.clone(source, attributes);
        }
        s.binds[name] = {
          path: bindPath,
          source: request.source,
          readOnly: request.readOnly,
          file,
          ...(request.key === undefined ? {} : { key: request.key }),
          ...(request.users === undefined ? {} : { users: [...request.users] }),
        };
        return { ...s.tree };
      });
      await this.#attach(name, request.top, file, detached!, tree as { rwMntId: number; roMntId: number });
    } finally {
      detached?.close();
    }
    return { name, path: bindPath };
  }

  /** Makes the point of bind `name` in the read-write view, then attaches `detached` on it in the exported one; each recorded. */
  async #attach(name: string, topName: ShareTop, file: boolean, detached: DetachedTree, tree: { rwMntId: number; roMntId: number }): Promise<void> {
    const rw = await openView(treeDir(this.dir), tree.rwMntId);
    try {
      const top = await rw.open(topName);
      try {
        const point = file ? await top.createFile(name, 0o600) : await top.mkdir(name, 0o755);
        await this.update((s) => {
          if (s.binds[name]) s.binds[name].point = point;
        });
      } finally {
        top.close();
      }
    } finally {
      rw.close();
    }
    const ro = await openView(sharedDirOf(this.dir), tree.roMntId);
    try {
      const top = await ro.open(topName);
      try {
        const target = file ? await TargetFile.open(top, name) : await top.open(name);
        try {
          const mntId = await detached.attach(target);
          await this.update((s) => {
            if (s.binds[name]) s.binds[name].mntId = mntId;
          });
        } finally {
          target.close();
        }
      } finally {
        top.close();
      }
    } finally {
      ro.close();
    }
  }

  /**
   * Undoes bind `name` from what the record says: unmounts what is mounted on its point (by the
   * recorded mount id; without one, what sits there on the share's view, which only the host
   * mounts on), checks it is gone, removes the point if it is still the recorded one. A missing
   * entry is fine.
   */
  async unbind(name: string): Promise<void> {
    const { bind, tree } = await this.update((s) => ({ bind: s.binds[name], tree: s.tree }));
    if (!bind) return;
    if (tree?.roMntId !== undefined) await this.#unmount(bind, tree.roMntId);
    if (tree?.rwMntId !== undefined) await this.#removePoint(bind, tree.rwMntId);
    await this.update((s) => {
      delete s.binds[name];
    });
  }

  async #unmount(bind: ShareBind, roMntId: number): Promise<void> {
    const point = path.join(sharedDirOf(this.dir), bind.path);
    const ids = await mountsAt(point, roMntId);
    if (bind.mntId !== undefined && !ids.includes(bind.mntId)) ids.push(bind.mntId);
    if (ids.length === 0) return;
    const ro = await openView(sharedDirOf(this.dir), roMntId).catch((error: unknown) => {
      // The view is gone: nothing can be mounted on it any more.
      if (error instanceof SystemError && (error.errnoName === 'ENOENT' || error.errnoName === 'ESTALE')) return undefined;
      throw error;
    });
    if (!ro) return;
    try {
      for (const id of ids) await unmountAt(ro, bind.path, id, point);
    } finally {
      ro.close();
    }
    // Still on the view, elsewhere: a folder above its point was renamed (a mount point itself
    // cannot be), which only a guest that could write the tree could do. It is still exported, so
    // the bind is not released (tearDown's unmount of the view takes it).
    const name = path.basename(bind.path);
    const moved = bind.mntId === undefined ? undefined : (await mountTable()).find((m) => m.id === bind.mntId && m.parent === roMntId && path.basename(m.mountPoint) === name);
    if (moved) throw new SystemError('umount2', 116, 'ESTALE', `bind ${bind.path} (mount ${moved.id}) was moved to ${moved.mountPoint}: not unmounted`);
  }

  async #removePoint(bind: ShareBind, rwMntId: number): Promise<void> {
    const rw = await openView(treeDir(this.dir), rwMntId).catch((error: unknown) => {
      if (error instanceof SystemError && (error.errnoName === 'ENOENT' || error.errnoName === 'ESTALE')) return undefined;
      throw error;
    });
    if (!rw) return; // the tree is gone, and its folders with it
    try {
      const [topName, name] = bind.path.split('/') as [string, string];
      const top = await rw.open(topName);
      try {
        const there = await top.statIfExists(name);
        if (!there) return;
        // A point made but not yet recorded is removed only if it is what we would have made: an empty folder or file.
        const identity = bind.point ?? { dev: there.dev, ino: there.ino };
        await top.remove(name, identity, bind.file ? 'file' : 'dir');
      } finally {
        top.close();
      }
    } finally {
      rw.close();
    }
  }

  /** Releases every bind, then the tree's mounts and folders. Every step is tried. */
  async tearDown(): Promise<void> {
    const state = await this.update((s) => s);
    const failures: unknown[] = [];
    // A bind that cannot be released (its point replaced or moved) does not keep the tree: the
    // unmount of a view detaches everything on it, and a later tearDown finds nothing to undo.
    await runAll(Object.keys(state.binds).reverse().map((name) => [`share bind ${name}`, () => this.unbind(name)] as const), 'could not release the share').catch((error: unknown) => failures.push(error));
    for (const where of [sharedDirOf(this.dir), treeDir(this.dir)]) {
      try {
        // The sandbox folder is the host's: its two mount points are unmounted by path, every layer.
        while ((await mountsAt(where)).length > 0) await unmount(where, { detach: true, noFollow: true });
        await fs.rmdir(where).catch((error: NodeJS.ErrnoException) => {
          if (error.code !== 'ENOENT') throw error;
        });
      } catch (error) {
        failures.push(error);
      }
    }
    throwFailures(failures, "could not release the share's tree");
    await this.update((s) => {
      delete s.tree;
    });
  }
}
