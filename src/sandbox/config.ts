/**
 * What a sandbox is made of, as users write it ({@link SandboxConfig}) and as vmpod keeps it
 * once checked ({@link ResolvedSandboxConfig}). Every field is validated here, before any side
 * effect, so that a bad config never leaves anything behind.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { InvalidArgumentError } from '../errors.js';
import type { Hypervisor, MachineProfile, VmDevice } from '../hypervisor/hypervisor.js';
import { checkDevice, runAsUser } from '../hypervisor/config.js';
import { checkUser } from '../hypervisor/virtiofsd.js';
import * as validate from '../validate.js';
import { DEFAULT_STATE_DIR } from '../state/store.js';
import { defaultGuestCacheDir } from '../guest/assets.js';
import { resolveNfvConfig, type NfvConfigInput, type ResolvedNfvConfig } from '../nfv/config.js';
import { checkVolumes, volumeHugepages, type VolumeSpec } from '../volume/spec.js';
import { resolveNetworkConfig, type ResolvedNetworkConfig, type SandboxNetworkConfig } from '../network/sandbox-config.js';

/** Where the guest kernel and initramfs come from. */
export interface GuestConfig {
  /** Cache of built guest assets (default `/var/cache/vmpod/guest`). */
  cacheDir?: string;
  /** Boot this kernel instead of the built one (an ELF vmlinux or a bzImage). */
  kernel?: string;
  /** Boot this initramfs instead of the built one. It must start the vmpod agent. */
  initramfs?: string;
  /**
   * Use this ext4 filesystem (a raw or qcow2 image file, or a host block device) instead of the
   * builtin busybox rootfs: attached read-only as a virtio-blk disk, and each container made
   * without a bundle or rootfs directory gets a copy-on-write rootfs over it. One image can
   * serve many sandboxes. QEMU `-device virtio-blk-pci,serial=vmpod-rootfs` (read-only).
   */
  rootfsImage?: string;
  /** Extra kernel command-line arguments. */
  kernelArgs?: string[];
  /**
   * Build the guest assets when the cache has none (`if-missing`, the default; takes a while
   * the first time, see `vmpod guest build`), or fail with a clear error (`never`).
   */
  build?: 'if-missing' | 'never';
}

/**
 * Configuration of {@link Sandbox.create}. The NFV fields (`hugepages`, `vhostUser`, `devices`,
 * `ksm`) are described in {@link NfvConfigInput}.
 */
/** Guest caching of the shared filesystem: see {@link SandboxConfig.sharedFsCache}. */
export type SharedFsCache = 'auto' | 'always' | 'none';

export interface SandboxConfig extends NfvConfigInput {
  /** Sandbox id (default: random). 1-64 characters of [A-Za-z0-9_.-]. */
  id?: string;
  /** State directory root (default `/run/vmpod`, or `$VMPOD_STATE_DIR`). */
  stateDir?: string;
  /** vCPUs (default 1); QEMU `-smp`. */
  cpus?: number;
  /**
   * Guest RAM in MiB (default 256); QEMU `-m`. At least {@link MIN_MEMORY_MIB} of the machine
   * type (q35: 128, microvm: 192): the least that boots the default guest and runs a container,
   * with a margin. Measured (TCG, guest kernel 6.1.0-57-cloud-amd64, 8.8 MB initramfs, a
   * container of the builtin rootfs): q35 boots with 86 MiB and panics with 85 ("System is
   * deadlocked on memory"); microvm boots with 140 MiB and panics with 139. What the container
   * itself needs comes on top; a kernel or initramfs of one's own may need more.
   */
  memoryMiB?: number;
  /** `q35` (default: PCIe, hotplug) or `microvm` (faster, no hotplug); QEMU `-M`. */
  machine?: MachineProfile;
  /** Guest kernel and initramfs. */
  guest?: GuestConfig;
  /**
   * Share host directories (bundle rootfs, volumes) with the guest through virtio-fs
   * (default true). Without it only the builtin rootfs can be used.
   */
  sharedFs?: boolean;
  /**
   * How the guest caches the shared filesystem (virtiofsd `-o cache=`, default `auto`):
   * - `auto`: metadata trusted for 1 s, a file's pages dropped each time it is opened, so
   *   changes made on the host show up in the guest;
   * - `always`: metadata and pages kept (`keep_cache`): repeated execs and reads of the same
   *   files skip virtiofsd, but a file changed on the host while the guest has it cached may be
   *   seen stale. For rootfs and volumes that only the guest changes (docs/volumes.md);
   * - `none`: nothing cached, every read goes to the host (direct I/O).
   */
  sharedFsCache?: SharedFsCache;
  /**
   * Serve the shared filesystem with an unprivileged virtiofsd (default: virtiofsd runs as
   * root). It runs as host uid `uid` and gid `gid`, root only inside a user namespace of its own
   * whose ids 0..count-1 are the host's uid..uid+count-1 (gids likewise; `count` default 65536),
   * so that a guest that took over virtiofsd holds no privilege on the host. Every mount it
   * exports (the share's tree, each container rootfs, OCI bind source and directory volume) is
   * an idmapped mount with that same map, so the guest sees files with their real owners: host
   * ids 0..count-1 as themselves (host root's files are root's in the guest, which can write them
   * as before), what the guest writes is stored with the writer's id (guest root: host 0).
   * Host ids outside 0..count-1 appear as 65534 (nobody) and can be used only as "others".
   *
   * Limits: a source must be on a filesystem that supports idmapped mounts (ext4, xfs, btrfs,
   * tmpfs do); an overlayfs mount (e.g. a container engine's merged rootfs), FUSE or NFS source,
   * or one with such a mount below it, cannot be shared so and is refused with
   * `IdmapUnsupportedError` (nothing left behind). Every folder above the state directory must let
   * `uid`:`gid` pass (o+x): the daemon reaches the share by path; the sandbox folder is then made
   * 0710 of group `gid` and `sandboxes/` 0711. Give each sandbox a range no host user or other
   * daemon uses (a process of uid `uid` could ptrace the daemon, and sees the share as its owner),
   * and not the one of `runAs`. Needs util-linux's unshare and nsenter. See docs/sandbox.md.
   */
  sharedFsUser?: { uid: number; gid: number; count?: number };
  /** Host processes that can talk to the agent at once (virtio-serial ports, default 4). */
  agentPorts?: number;
  /**
   * Stream ports (default 8, at most 30; 0 turns them off): virtio-serial ports on a device of
   * their own that containers' init stdout and stderr use instead of the agent while they are
   * free, one port per output (docs/sandbox.md, "Output streams").
   */
  streamPorts?: number;
  /** Agent and guest kernel debug output on the console log (default false). */
  debug?: boolean;
  /** The VM backend (default: QEMU). */
  hypervisor?: Hypervisor;
  /**
   * Run the hypervisor as this unprivileged user (QEMU `-runas UID:GID`, after it opened what it
   * needs at start), so that a guest that escapes into QEMU has no root on the host. vmpod
   * itself and the host plumbing still run as root, and so does virtiofsd unless
   * {@link SandboxConfig.sharedFsUser} is set.
   */
  runAs?: { uid: number; gid: number };
  /**
   * Extra VM devices, added as given (for devices vmpod does not manage itself, e.g. a spare
   * virtio-serial port). Their ids must not collide with vmpod's (`agent`, `streams`, `sharedfs`, ...).
   */
  extraDevices?: VmDevice[];
  /** Volumes of the sandbox (`Volume` objects or their specs), mounted at every start; containers use them by name. */
  volumes?: (VolumeSpec | { toJSON(): VolumeSpec })[];
  /**
   * The sandbox's network (see docs/sandbox-networking.md): a namespace (made, or adopted), CNI
   * networks and scanned interfaces plugged into the VM, mirrored in the guest. Absent: no network.
   */
  network?: SandboxNetworkConfig;
}

/** A checked {@link SandboxConfig} with every default filled in; persisted with the sandbox. */
export interface ResolvedSandboxConfig extends ResolvedNfvConfig {
  id: string;
  stateDir: string;
  cpus: number;
  memoryMiB: number;
  machine: MachineProfile;
  guest: { cacheDir: string; kernel?: string; initramfs?: string; rootfsImage?: string; kernelArgs: string[]; build: 'if-missing' | 'never' };
  sharedFs: boolean;
  /** Absent in records of older versions: `auto`. */
  sharedFsCache?: SharedFsCache;
  /** Absent: virtiofsd runs as root. */
  sharedFsUser?: { uid: number; gid: number; count: number };
  agentPorts: number;
  /** Absent in records of older versions: no stream ports. */
  streamPorts?: number;
  debug: boolean;
  extraDevices: VmDevice[];
  volumes: VolumeSpec[];
  network?: ResolvedNetworkConfig;
  runAs?: { uid: number; gid: number };
}

const CONFIG_KEYS = new Set([
  'id', 'stateDir', 'cpus', 'memoryMiB', 'machine', 'guest', 'sharedFs', 'sharedFsCache', 'sharedFsUser', 'agentPorts', 'streamPorts', 'debug', 'hypervisor', 'extraDevices',
  'hugepages', 'vhostUser', 'devices', 'ksm', 'sysfs', 'volumes', 'network', 'runAs',
]);
const GUEST_KEYS = new Set(['cacheDir', 'kernel', 'initramfs', 'rootfsImage', 'kernelArgs', 'build']);

function rejectUnknownKeys(value: object, allowed: Set<string>, prefix: string): void {
  for (const key of Object.keys(value)) {
    if (!allowed.has(key)) throw new InvalidArgumentError(`${prefix}${key}`, 'unknown field');
  }
}

function bool(value: unknown, field: string, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw new InvalidArgumentError(field, 'must be true or false');
  return value;
}

function checkExtraDevices(devices: unknown): VmDevice[] {
  if (devices === undefined) return [];
  if (!Array.isArray(devices)) throw new InvalidArgumentError('extraDevices', 'must be an array of devices');
  devices.forEach((d, i) => checkDevice(d as VmDevice, `extraDevices[${i}]`));
  return structuredClone(devices) as VmDevice[];
}

function checkSharedFsCache(value: unknown): SharedFsCache {
  if (value === undefined) return 'auto';
  if (value !== 'auto' && value !== 'always' && value !== 'none') throw new InvalidArgumentError('sharedFsCache', 'must be "auto", "always" or "none"');
  return value;
}

/** Checks `sharedFsUser`: a valid range (not root, within 2^32-2), a share to serve, and not the ids QEMU runs as. */
function checkSharedFsUser(value: unknown, sharedFs: boolean, runAs: { uid: number; gid: number } | undefined): { uid: number; gid: number; count: number } {
  const user = checkUser(value, 'sharedFsUser');
  if (!sharedFs) throw new InvalidArgumentError('sharedFsUser', 'needs sharedFs (it is the user of the shared filesystem\'s daemon)');
  const inside = (id: number, base: number): boolean => id >= base && id < base + user.count;
  if (runAs && (inside(runAs.uid, user.uid) || inside(runAs.gid, user.gid))) {
    throw new InvalidArgumentError('sharedFsUser', `its range ${user.uid}:${user.gid} (+${user.count}) holds the ids of runAs (${runAs.uid}:${runAs.gid}): QEMU and virtiofsd must not share ids`);
  }
  return user;
}

/** Stream ports of a sandbox unless its config says otherwise: four containers with both outputs. */
export const DEFAULT_STREAM_PORTS = 8;
/** Most stream ports a sandbox can have (one virtio-serial device). */
export const MAX_STREAM_PORTS = 30;

/** Checks `streamPorts` of a sandbox config (default {@link DEFAULT_STREAM_PORTS}; 0 turns the fast path off). */
export function checkStreamPorts(value: unknown): number {
  if (value === undefined) return DEFAULT_STREAM_PORTS;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > MAX_STREAM_PORTS) {
    throw new InvalidArgumentError('streamPorts', `must be an integer from 0 to ${MAX_STREAM_PORTS}`);
  }
  return value;
}

/**
 * The least guest RAM a sandbox may have, per machine type: the measured least that boots the
 * default guest and runs a container (q35 86 MiB, microvm 140 MiB) with a margin of about
 * 50 MiB left free, so that a failure to boot is a clear error at `create()` rather than a
 * kernel panic.
 */
export const MIN_MEMORY_MIB: Readonly<Record<MachineProfile, number>> = { q35: 128, microvm: 192 };
/** The most guest RAM a sandbox may have (1 TiB). */
export const MAX_MEMORY_MIB = 1024 * 1024;

/** Checks `memoryMiB` for machine type `machine`. */
function checkMemory(value: unknown, machine: MachineProfile): number {
  const memoryMiB = validate.integer(value ?? 256, 'memoryMiB', 1, MAX_MEMORY_MIB);
  if (memoryMiB < MIN_MEMORY_MIB[machine]) {
    throw new InvalidArgumentError('memoryMiB', `${memoryMiB} MiB is less than the ${MIN_MEMORY_MIB[machine]} MiB a ${machine} sandbox needs to boot its guest`);
  }
  return memoryMiB;
}

/** A fresh random sandbox id. */
export function randomId(): string {
  return `vp-${randomBytes(6).toString('hex')}`;
}

/** Checks `config` and fills in the defaults; throws {@link InvalidArgumentError}. No side effects. */
export function resolveSandboxConfig(config: SandboxConfig): ResolvedSandboxConfig {
  if (typeof config !== 'object' || config === null) throw new InvalidArgumentError('config', 'must be an object');
  rejectUnknownKeys(config, CONFIG_KEYS, '');
  const guest = config.guest ?? {};
  if (typeof guest !== 'object' || guest === null) throw new InvalidArgumentError('guest', 'must be an object');
  rejectUnknownKeys(guest, GUEST_KEYS, 'guest.');
  const machine = config.machine ?? 'q35';
  if (machine !== 'q35' && machine !== 'microvm') throw new InvalidArgumentError('machine', 'must be "q35" or "microvm"');
  const kernelArgs = guest.kernelArgs ?? [];
  if (!Array.isArray(kernelArgs) || kernelArgs.some((a) => typeof a !== 'string' || a.length === 0 || /[\s\0]/u.test(a))) {
    throw new InvalidArgumentError('guest.kernelArgs', 'must be an array of non-empty strings without whitespace');
  }
  const build = guest.build ?? 'if-missing';
  if (build !== 'if-missing' && build !== 'never') throw new InvalidArgumentError('guest.build', 'must be "if-missing" or "never"');
  const memoryMiB = checkMemory(config.memoryMiB, machine);
  const sharedFs = bool(config.sharedFs, 'sharedFs', true);
  const volumes = checkVolumes(config.volumes);
  const resolved: ResolvedSandboxConfig = {
    id: config.id === undefined ? randomId() : validate.id(config.id, 'id'),
    stateDir: validate.absolutePath(config.stateDir ?? process.env['VMPOD_STATE_DIR'] ?? DEFAULT_STATE_DIR, 'stateDir'),
    cpus: validate.integer(config.cpus ?? 1, 'cpus', 1, 64),
    memoryMiB,
    machine,
    guest: {
      cacheDir: validate.absolutePath(guest.cacheDir ?? defaultGuestCacheDir(), 'guest.cacheDir'),
      kernelArgs: [...kernelArgs],
      build,
    },
    sharedFs,
    sharedFsCache: checkSharedFsCache(config.sharedFsCache),
    agentPorts: validate.integer(config.agentPorts ?? 4, 'agentPorts', 1, 16),
    streamPorts: checkStreamPorts(config.streamPorts),
    debug: bool(config.debug, 'debug', false),
    extraDevices: checkExtraDevices(config.extraDevices),
    volumes,
    ...resolveNfvConfig(config, { memoryMiB, machine, sharedMemory: sharedFs, volumePages: volumeHugepages(volumes) }),
  };
  if (config.network !== undefined) resolved.network = resolveNetworkConfig(config.network);
  if (config.runAs !== undefined) resolved.runAs = runAsUser(config.runAs, 'runAs');
  if (config.sharedFsUser !== undefined) resolved.sharedFsUser = checkSharedFsUser(config.sharedFsUser, sharedFs, resolved.runAs);
  if (guest.kernel !== undefined) resolved.guest.kernel = validate.absolutePath(guest.kernel, 'guest.kernel');
  if (guest.initramfs !== undefined) resolved.guest.initramfs = validate.absolutePath(guest.initramfs, 'guest.initramfs');
  if (guest.rootfsImage !== undefined) resolved.guest.rootfsImage = validate.absolutePath(guest.rootfsImage, 'guest.rootfsImage');
  return resolved;
}
