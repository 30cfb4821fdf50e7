/**
 * The one typed declaration of the native addon (`native/addon`), and its loader.
 *
 * Everything the addon exports is declared in {@link NativeAddon}; nothing else in vmpod
 * touches the raw module. The addon is built by `npm install` (cmake-js) into
 * `build/Release/vmpod.node`; `VMPOD_ADDON` overrides the path.
 *
 * @internal
 * @module
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { AddonError } from './errors.js';

/** Must equal `kAbiVersion` in native/addon/common.h. */
export const ABI_VERSION = 4;

/** The raw surface of the addon. */
export interface NativeAddon {
  readonly abiVersion: number;

  // pty.cc — vmpod-runtime's terminals (src/runtime/terminal.ts), on the main thread; throw an Error carrying code/errno/syscall.
  /** A new pseudo-terminal pair (posix_openpt, grantpt, unlockpt, the slave opened by name): close-on-exec, O_NOCTTY. */
  openPty(): { master: number; slave: number; name: string };
  /** `ioctl(fd, TIOCSCTTY)`: the calling session leader takes terminal `fd` as its controlling terminal. */
  setControllingTerminal(fd: number): void;
  /** `ioctl(fd, TIOCGWINSZ)`. */
  getWindowSize(fd: number): { rows: number; cols: number };
  /** `ioctl(fd, TIOCSWINSZ)`. */
  setWindowSize(fd: number, rows: number, cols: number): void;
  /** `cfmakeraw` + `tcsetattr(TCSANOW)` on terminal `fd`. */
  setRawMode(fd: number): void;

  // fdpass.cc — unix sockets for QMP/virtiofsd and SCM_RIGHTS; throw an Error carrying code/errno/syscall.
  /** A connected, non-blocking, close-on-exec AF_UNIX stream socket (`connect(2)`). */
  unixConnect(path: string): number;
  /** A bound, listening, close-on-exec AF_UNIX stream socket, to hand to a server process. */
  unixListen(path: string, backlog: number): number;
  /** One `sendmsg(2)` of `data` with `fds` as SCM_RIGHTS (MSG_DONTWAIT); returns the bytes written. */
  sendFds(socketFd: number, data: Buffer, fds: readonly number[]): number;

  // flock.cc — non-blocking flock(2) on the main thread; callers retry with a backoff.
  /** `flock(fd, LOCK_EX|LOCK_NB)` (or LOCK_SH): true when taken, false when someone else holds it. */
  tryLock(fd: number, exclusive: boolean): boolean;
  /** `flock(fd, LOCK_UN)`. */
  unlock(fd: number): void;

  // pathfd.cc — path operations by fd (openat2 RESOLVE_*, the new mount API, statx mount ids),
  // on the worker thread; pidfds on the main thread. Reject/throw a NativeSystemError.
  /** `openat2(dirFd, path, {flags|O_CLOEXEC, mode, resolve})`: a new fd. */
  openAt(dirFd: number, path: string, flags: number, resolve: number, mode?: number): Promise<number>;
  /** `mkdirat(dirFd, name, mode)`; `name` is one path component. */
  mkdirAt(dirFd: number, name: string, mode: number): Promise<void>;
  /** An empty regular file that did not exist (`O_CREAT|O_EXCL|O_NOFOLLOW`). */
  createFileAt(dirFd: number, name: string, mode: number): Promise<void>;
  /** `statx(dirFd, name, AT_SYMLINK_NOFOLLOW)` with the mount id; `name` "" is dirFd itself. */
  statAt(dirFd: number, name: string): Promise<NativeStat>;
  /** `unlinkat` of `name` if it is still the object (dev, ino) and a directory or not as `dir` says (else ESTALE). */
  unlinkAt(dirFd: number, name: string, dir: boolean, dev: number, ino: number): Promise<void>;
  /** `open_tree(dirFd, path, OPEN_TREE_CLONE [|AT_RECURSIVE])`: a detached copy of the mount tree. */
  openTree(dirFd: number, path: string, recursive: boolean): Promise<number>;
  /**
   * `mount_setattr(fd, "", AT_EMPTY_PATH [|AT_RECURSIVE], {attr_set, attr_clr, userns_fd})`.
   * `usernsFd` (a user namespace's fd) goes with `MOUNT_ATTR_IDMAP` in `set`, and only with it:
   * the detached mount takes that namespace's id maps (EINVAL where the filesystem cannot).
   */
  mountSetattr(fd: number, recursive: boolean, set: number, clear: number, usernsFd?: number): Promise<void>;
  /** `move_mount(fromFd, "", toFd, "", F_EMPTY_PATH|T_EMPTY_PATH)`. */
  moveMount(fromFd: number, toFd: number): Promise<void>;
  /** Detaches the mount whose root `fd` is, if it is mount `mntId` (else ESTALE). */
  unmountFd(fd: number, mntId: number): Promise<void>;
  /** `rm -r dirFd/name` without following symlinks or entering other mounts (EBUSY naming them). */
  removeTreeAt(dirFd: number, name: string): Promise<void>;
  /** `close(fd)`. */
  closeFd(fd: number): void;
  /** `pipe2(O_CLOEXEC)`: [read end, write end]. */
  pipe(): [number, number];
  /** `pidfd_open(pid, 0)`, close-on-exec. */
  pidfdOpen(pid: number): number;
  /** `pidfd_send_signal(pidfd, signal, NULL, 0)`. */
  pidfdSendSignal(pidfd: number, signal: number): void;
  readonly pathConstants: Readonly<Record<
    | 'AT_FDCWD' | 'O_RDONLY' | 'O_PATH' | 'O_DIRECTORY' | 'O_NOFOLLOW'
    | 'RESOLVE_BENEATH' | 'RESOLVE_NO_SYMLINKS' | 'RESOLVE_NO_MAGICLINKS' | 'RESOLVE_NO_XDEV'
    | 'MOUNT_ATTR_RDONLY' | 'MOUNT_ATTR_NOSUID' | 'MOUNT_ATTR_NODEV' | 'MOUNT_ATTR_NOEXEC' | 'MOUNT_ATTR_IDMAP'
    // layer.cc adds these two (image layers, src/image/in-root.ts)
    | 'RESOLVE_IN_ROOT' | 'O_NONBLOCK',
    number
  >>;

  // layer.cc — applying image layers (src/image/unpack.ts) on the worker thread, in submission
  // order. Every path below rootFd is resolved inside it (openat2 RESOLVE_IN_ROOT |
  // RESOLVE_NO_MAGICLINKS); the final component is never followed. Reject with a NativeSystemError
  // (syscall "hardlink" with EPERM: a hardlink whose target is not a regular file).
  /** Applies one entry (replacing what is there); an `open` regular file resolves with its fd. */
  layerEntry(rootFd: number, entry: NativeLayerEntry): Promise<number | undefined>;
  /** Owner, mode, xattrs, times of a file written through `fd` (from layerEntry), and closes it. */
  layerFinishFile(fd: number, entry: NativeLayerEntry): Promise<void>;
  /** `rm -r parent/name` inside the root, without following symlinks; absent is fine. */
  layerRemove(rootFd: number, parent: string, name: string): Promise<void>;
  /** Empties `dir` but for the `keep` paths (relative to dir) and the directories leading to them. */
  layerPrune(rootFd: number, dir: string, keep: readonly string[]): Promise<void>;
  /** `fsetxattr` on the directory `path` (made with its parents if missing). */
  layerSetXattr(rootFd: number, path: string, name: string, value: Buffer): Promise<void>;
  /** Directory times at the end of a layer: 4 numbers per path (atime s, ns, mtime s, ns). */
  layerDirTimes(rootFd: number, paths: readonly string[], times: readonly number[]): Promise<void>;

  // mount.cc — mount(2)/umount2(2) on the libuv pool; rejects with an Error carrying code/errno/syscall.
  mount(source: string | null, target: string, fstype: string | null, flags: number, data: string | null): Promise<void>;
  umount(target: string, flags: number): Promise<void>;
  readonly mountConstants: Readonly<Record<
    | 'MS_RDONLY' | 'MS_NOSUID' | 'MS_NODEV' | 'MS_NOEXEC' | 'MS_NOATIME' | 'MS_REMOUNT' | 'MS_BIND' | 'MS_REC'
    | 'MS_PRIVATE' | 'MS_SLAVE' | 'MS_SHARED' | 'MS_UNBINDABLE' | 'MNT_FORCE' | 'MNT_DETACH' | 'UMOUNT_NOFOLLOW',
    number
  >>;

  // sriov.cc — RTM_SETLINK IFLA_VFINFO_LIST on a PF (mac: 6 bytes; vlan 0-4095; qos 0-7).
  sriovVfMessage(ifindex: number, vf: number, mac: Buffer | null, vlan: number | null, qos: number, seq: number): Buffer;
  sriovSetVf(pf: string, vf: number, mac: Buffer | null, vlan: number | null, qos: number): Promise<void>;

  // --- Host networking: netns.cc, link.cc, address.cc, route.cc, tc.cc, tap.cc, packet.cc. ---
  // Every call runs on the addon's worker thread, one at a time in submission order (so dependent
  // calls may be queued without awaiting each), and rejects with a NativeSystemError. `ns` is null
  // for the process's own network namespace, an open NativeNetns, or a namespace file path.

  // netns.cc
  /** The class of namespace handles (for `instanceof`; not constructible from JS). */
  readonly NetnsHandle: abstract new (...args: never[]) => NativeNetns;
  /** `ip netns add NAME` with `dir` = /run/netns: a new namespace bind-mounted at dir/name. */
  netnsCreate(dir: string, name: string): Promise<NativeNetns>;
  /** Opens the namespace file at `path` (EINVAL when it is not a network namespace). */
  netnsOpen(path: string): Promise<NativeNetns>;
  /** `ip netns delete NAME`: detach-unmounts and unlinks dir/name. */
  netnsDelete(dir: string, name: string): Promise<void>;

  // link.cc (rtnetlink links)
  /** RTM_NEWLINK with NLM_F_CREATE|NLM_F_EXCL; resolves with the new link's ifindex. */
  linkAdd(ns: NativeNs, spec: NativeLinkSpec): Promise<number>;
  /** RTM_NEWLINK on an existing link (up/down, MTU, MAC, group, master, rename, move). */
  linkSet(ns: NativeNs, name: string, change: NativeLinkChange): Promise<void>;
  /** RTM_DELLINK by name. */
  linkDelete(ns: NativeNs, name: string): Promise<void>;
  /** RTM_DELLINK by IFLA_GROUP: every link of the group, unregistered in one batch. */
  linkDeleteGroup(ns: NativeNs, group: number): Promise<void>;
  linkList(ns: NativeNs): Promise<NativeLink[]>;
  linkGet(ns: NativeNs, name: string): Promise<NativeLink>;

  // address.cc
  addrAdd(ns: NativeNs, spec: NativeAddressSpec, replace: boolean): Promise<void>;
  addrDelete(ns: NativeNs, spec: NativeAddressSpec): Promise<void>;
  addrList(ns: NativeNs): Promise<NativeAddress[]>;

  // route.cc
  routeAdd(ns: NativeNs, spec: NativeRouteSpec, replace: boolean): Promise<void>;
  routeDelete(ns: NativeNs, spec: NativeRouteSpec): Promise<void>;
  /** Every route of every table, cloned cache entries excluded. */
  routeList(ns: NativeNs): Promise<NativeRoute[]>;

  // neigh.cc
  /** Every IPv4/IPv6 neighbour entry (RTM_GETNEIGH dump). */
  neighList(ns: NativeNs): Promise<NativeNeighbor[]>;

  // tc.cc
  qdiscAddIngress(ns: NativeNs, dev: string): Promise<void>;
  qdiscDeleteIngress(ns: NativeNs, dev: string): Promise<void>;
  qdiscList(ns: NativeNs): Promise<NativeQdisc[]>;
  /** u32 match-all + mirred egress redirect from `dev`'s ingress (parent ffff:) to `to`. */
  filterAddRedirect(ns: NativeNs, spec: { dev: string; to: string; prio?: number | undefined; protocol?: number | undefined }): Promise<void>;
  /** Filters of `dev` under `parent`; u32 hash tables are left out. */
  filterList(ns: NativeNs, dev: string, parent: number): Promise<NativeFilter[]>;
  /** RTM_DELTFILTER; prio 0 or absent deletes every filter under the parent. */
  filterDelete(ns: NativeNs, spec: { dev: string; parent: number; prio?: number | undefined }): Promise<void>;

  // tap.cc (fds are O_CLOEXEC; the caller owns them)
  /** Opens /dev/net/tun `queues` times inside `ns` and TUNSETIFFs each (exclusive: create). */
  tapOpen(ns: NativeNs, spec: NativeTapSpec): Promise<{ name: string; index: number; fds: number[] }>;
  /** One fd per queue of an existing macvtap, through a private device node made from sysfs. */
  macvtapOpen(
    ns: NativeNs,
    spec: {
      name: string;
      queues?: number | undefined;
      vnetHdr?: boolean | undefined;
      nonBlocking?: boolean | undefined;
      devDir?: string | undefined;
    },
  ): Promise<number[]>;

  // packet.cc
  /** An AF_PACKET raw socket bound to `dev` (every protocol): read() gets a frame, write() sends one. */
  packetOpen(
    ns: NativeNs,
    dev: string,
    options: { ignoreOutgoing?: boolean | undefined; nonBlocking?: boolean | undefined },
  ): Promise<number>;
}

// --- Host networking types (see the members above). ---

/** How the addon rejects: a Node-style system error. */
export interface NativeSystemError extends Error {
  /** errno name, e.g. `EEXIST`. */
  code: string;
  errno: number;
  /** The system call or netlink request, e.g. `RTM_NEWLINK`, `TUNSETIFF`, `open`. */
  syscall: string;
  /** strerror() text. */
  description: string;
  /** The object the call was about (interface name, path), when known. */
  target?: string;
  /** More detail, e.g. the kernel's extended-ack message. */
  detail?: string;
}

/** An open network namespace: its fd (-1 once closed) and an rtnetlink socket bound inside it. */
export interface NativeNetns {
  readonly fd: number;
  readonly path: string;
  /** Inode of the namespace (as `stat -L` shows), equal for every handle on the same namespace. */
  readonly inode: number;
  /** Drops this handle; fds close once no queued call uses them. */
  close(): void;
}

/** null: the process's namespace; a handle; or a namespace file path. */
export type NativeNs = NativeNetns | string | null;

/** Attributes of a link to create or change (numbers are u32; mac is aa:bb:cc:dd:ee:ff). */
export interface NativeLinkAttributes {
  mtu?: number | undefined;
  mac?: string | undefined;
  up?: boolean | undefined;
  group?: number | undefined;
  txQueueLen?: number | undefined;
  /** Master to enslave to; null detaches (only for linkSet). */
  master?: string | null | undefined;
  /** The namespace the link is created in (linkAdd) or moved to (linkSet): IFLA_NET_NS_FD. */
  netns?: NativeNs | undefined;
}

export interface NativeLinkSpec extends NativeLinkAttributes {
  kind: 'veth' | 'macvlan' | 'macvtap' | 'bridge';
  name: string;
  /** veth: the peer, created directly in its `netns`. */
  peer?: NativeLinkAttributes & { name: string } | undefined;
  /** macvlan/macvtap: the lower link, in `ns`. */
  link?: string | undefined;
  mode?: 'private' | 'vepa' | 'bridge' | 'passthru' | 'source' | undefined;
}

export interface NativeLinkChange extends NativeLinkAttributes {
  newName?: string | undefined;
}

export interface NativeLink {
  index: number;
  name: string;
  /** IFLA_INFO_KIND ("" for links without one: loopback, physical). */
  kind: string;
  slaveKind?: string;
  flags: number;
  /** ARPHRD_* */
  type: number;
  up: boolean;
  lowerUp: boolean;
  loopback: boolean;
  operState: string;
  mac: string;
  mtu: number;
  group: number;
  txQueueLen: number;
  masterIndex?: number;
  master?: string;
  linkIndex?: number;
  linkNetnsId?: number;
  macvlanMode?: 'private' | 'vepa' | 'bridge' | 'passthru' | 'source' | 'unknown';
  tun?: {
    type: 'tun' | 'tap';
    pi: boolean;
    vnetHdr: boolean;
    persist: boolean;
    multiQueue: boolean;
    queues: number;
    disabledQueues: number;
    owner?: number;
    group?: number;
  };
}

export interface NativeAddressSpec {
  dev: string;
  family: 4 | 6;
  address: string;
  prefixLength: number;
  peer?: string | undefined;
  broadcast?: string | undefined;
  /** RT_SCOPE_* */
  scope?: number | undefined;
  noDad?: boolean | undefined;
  label?: string | undefined;
}

export interface NativeAddress {
  index: number;
  dev: string;
  family: 4 | 6;
  address: string;
  prefixLength: number;
  scope: number;
  /** IFA_F_* */
  flags: number;
  peer?: string;
  broadcast?: string;
  label?: string;
}

export interface NativeRouteSpec {
  family: 4 | 6;
  /** Absent with dstLength 0: the default route. */
  dst?: string | undefined;
  dstLength: number;
  gateway?: string | undefined;
  dev?: string | undefined;
  src?: string | undefined;
  metric?: number | undefined;
  table?: number | undefined;
  /** RT_SCOPE_*, RTPROT_*, RTN_* */
  scope?: number | undefined;
  protocol?: number | undefined;
  type?: number | undefined;
  onlink?: boolean | undefined;
}

export interface NativeNeighbor {
  family: 4 | 6;
  dst: string;
  lladdr?: string;
  dev?: string;
  /** NUD_* bits (NUD_PERMANENT = 0x80). */
  state: number;
  /** NTF_* bits. */
  flags: number;
}

export interface NativeRoute {
  family: 4 | 6;
  dst?: string;
  dstLength: number;
  gateway?: string;
  oif?: number;
  dev?: string;
  src?: string;
  metric?: number;
  table: number;
  scope: number;
  protocol: number;
  type: number;
  /** RTNH_F_* / RTM_F_* */
  flags: number;
  multipath?: boolean;
}

export interface NativeQdisc {
  index: number;
  dev: string;
  kind: string;
  handle: number;
  parent: number;
}

export interface NativeFilter {
  parent: number;
  handle: number;
  prio: number;
  /** Ethernet protocol in host order (3 = ETH_P_ALL). */
  protocol: number;
  kind: string;
  chain?: number;
  actions: Array<{ kind: string; eaction?: number; action?: number; ifindex?: number; dev?: string }>;
}

/** What `statAt` reports (statx, without following a final symlink). */
export interface NativeStat {
  /** `major * 2^32 + minor`. */
  dev: number;
  ino: number;
  /** st_mode: type and permission bits. */
  mode: number;
  /** The id of the mount the object is on (as in /proc/self/mountinfo). */
  mntId: number;
  /** The object is the root of its mount. */
  mountRoot: boolean;
  size: number;
}

export interface NativeTapSpec {
  name: string;
  queues?: number | undefined;
  multiQueue?: boolean | undefined;
  vnetHdr?: boolean | undefined;
  persist?: boolean | undefined;
  owner?: number | undefined;
  group?: number | undefined;
  nonBlocking?: boolean | undefined;
  /** true: create (IFF_TUN_EXCL, EBUSY if the name is taken); false: attach to an existing tap. */
  exclusive?: boolean | undefined;
}

/** One layer entry for `layerEntry` (layer.cc). Times absent: left as they are. */
export interface NativeLayerEntry {
  /** The parent directory, normalised and relative to the root ("" for the root). */
  parent: string;
  /** One path component; "" for the root itself (a directory: attributes only). */
  name: string;
  /** 0 file, 1 directory, 2 symlink, 3 hardlink, 4 char device, 5 block device, 6 fifo. */
  type: number;
  /** Permission bits with setuid/setgid/sticky (07777). */
  mode: number;
  uid: number;
  gid: number;
  /** false: leave the owner as created (an unprivileged caller). */
  chown: boolean;
  atimeSec?: number | undefined;
  atimeNsec?: number | undefined;
  mtimeSec?: number | undefined;
  mtimeNsec?: number | undefined;
  /** A symlink's target (stored verbatim), or a hardlink's target (normalised, in the root). */
  link?: string | undefined;
  major?: number | undefined;
  minor?: number | undefined;
  xattrs?: ReadonlyArray<readonly [string, Buffer]> | undefined;
  /** A regular file's whole contents. */
  data?: Buffer | readonly Buffer[] | undefined;
  /** A regular file: resolve with its fd (created, empty) instead of writing `data`. */
  open?: boolean | undefined;
  /** A directory: leave its times for layerDirTimes. */
  deferTimes?: boolean | undefined;
}

/** Root of the installed package (the folder holding package.json). */
export const packageRoot: string = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

let loaded: NativeAddon | undefined;

/** Loads the addon once; throws {@link AddonError} with the fix when it is missing or stale. */
export function native(): NativeAddon {
  if (loaded) return loaded;
  const file = process.env['VMPOD_ADDON'] ?? path.join(packageRoot, 'build', 'Release', 'vmpod.node');
  let addon: NativeAddon;
  try {
    addon = createRequire(import.meta.url)(file) as NativeAddon;
  } catch (cause) {
    throw new AddonError(`cannot load the native addon ${file}: run "npm run build:native"`, { cause });
  }
  if (addon.abiVersion !== ABI_VERSION) {
    throw new AddonError(
      `native addon ${file} has ABI ${addon.abiVersion}, this vmpod needs ${ABI_VERSION}: run "npm run build:native"`,
    );
  }
  loaded = addon;
  return addon;
}
