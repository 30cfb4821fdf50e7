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
export const ABI_VERSION = 2;

/** The raw surface of the addon. */
export interface NativeAddon {
  readonly abiVersion: number;

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
