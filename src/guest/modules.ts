/**
 * Kernel modules of the guest: which `.ko` files the initramfs carries and in which order
 * /init loads them, resolved from the `modules.dep` that `depmod -b DIR VERSION` writes.
 *
 * @module
 */
import { GuestBuildError } from './errors.js';

/**
 * The modules a vmpod guest loads, in load order (transports first). Names use `_`, as
 * `modprobe` and `/proc/modules` do. Entries that the kernel has built in are skipped.
 */
export const DEFAULT_GUEST_MODULES: readonly string[] = [
  // virtio transports: PCI for q35, MMIO for microvm
  'virtio_pci',
  'virtio_mmio',
  // devices
  'virtio_console', // virtio-serial: the agent channel
  'virtio_blk', // block volumes, rootfs images
  'virtio_net',
  'virtiofs', // shared directories (pulls in fuse)
  'vmw_vsock_virtio_transport', // vsock (KVM hosts), pulls in vsock
  // file systems a container rootfs or volume may use
  'crc32c_generic', // ext4's metadata checksums (a soft dependency: modules.dep omits it)
  'ext4', // block volumes (built into the cloud kernel, a module in the generic one)
  'overlay',
  'squashfs',
  'erofs',
  // networking inside the guest
  'af_packet',
  'tun',
];

/** The parsed `modules.dep` and `modules.builtin` of one kernel. */
export interface ModuleIndex {
  /** Module path (relative to /lib/modules/VERSION) -> the paths it depends on. */
  readonly deps: ReadonlyMap<string, readonly string[]>;
  /** Module name (`virtio_net`) -> its path. */
  readonly paths: ReadonlyMap<string, string>;
  /** Names of the modules built into the kernel image. */
  readonly builtin: ReadonlySet<string>;
}

/** `kernel/drivers/net/virtio_net.ko` (or `.ko.xz`, ...) -> `virtio_net`. */
export function moduleName(modulePath: string): string {
  const base = modulePath.slice(modulePath.lastIndexOf('/') + 1);
  return base.replace(/\.ko(\.(xz|zst|gz))?$/u, '').replaceAll('-', '_');
}

/** Parses `modules.dep` ("path: dep dep ...") and `modules.builtin` (one path per line). */
export function parseModuleIndex(modulesDep: string, modulesBuiltin: string): ModuleIndex {
  const deps = new Map<string, string[]>();
  const paths = new Map<string, string>();
  for (const line of modulesDep.split('\n')) {
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const modulePath = line.slice(0, colon).trim();
    deps.set(modulePath, line.slice(colon + 1).trim().split(/\s+/u).filter(Boolean));
    paths.set(moduleName(modulePath), modulePath);
  }
  const builtin = new Set(
    modulesBuiltin
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean)
      .map(moduleName),
  );
  return { deps, paths, builtin };
}

/** The outcome of {@link resolveModules}. */
export interface ResolvedModules {
  /** Paths of the modules to load, each after everything it depends on. */
  readonly load: readonly string[];
  /** Requested names the kernel has built in (nothing to load). */
  readonly builtin: readonly string[];
}

/**
 * Resolves `requested` (names, in the wanted order) to the `.ko` files to load: every module
 * comes after its dependencies (a post-order walk of `modules.dep`), each appears once.
 * A name that is neither a module nor built in is a {@link GuestBuildError}.
 */
export function resolveModules(index: ModuleIndex, requested: readonly string[], kernelRelease: string): ResolvedModules {
  const load: string[] = [];
  const builtin: string[] = [];
  const done = new Set<string>();
  const visiting = new Set<string>();
  const visit = (modulePath: string, chain: readonly string[]): void => {
    if (done.has(modulePath)) return;
    if (visiting.has(modulePath)) {
      throw new GuestBuildError('modules', `dependency cycle in modules.dep: ${[...chain, modulePath].join(' -> ')}`);
    }
    const deps = index.deps.get(modulePath);
    if (deps === undefined) {
      throw new GuestBuildError('modules', `${modulePath} is listed as a dependency but missing from modules.dep of ${kernelRelease}`);
    }
    visiting.add(modulePath);
    for (const dep of deps) visit(dep, [...chain, modulePath]);
    visiting.delete(modulePath);
    done.add(modulePath);
    load.push(modulePath);
  };
  for (const raw of requested) {
    const name = raw.replaceAll('-', '_');
    const modulePath = index.paths.get(name);
    if (modulePath !== undefined) visit(modulePath, []);
    else if (index.builtin.has(name)) builtin.push(name);
    else {
      throw new GuestBuildError(
        'modules',
        `kernel ${kernelRelease} has no module "${name}" and does not have it built in: remove it from the module list or use a kernel that has it`,
      );
    }
  }
  return { load, builtin };
}
