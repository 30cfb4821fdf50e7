/**
 * The NFV parts of a sandbox's config, as users write them and as vmpod keeps them once
 * checked: guest RAM on hugepages and hugepages reserved in the guest, vhost-user NICs, PCI
 * devices passed through with VFIO, and KSM. Checked here, before any side effect.
 *
 * @module
 */
import { InvalidArgumentError } from '../errors.js';
import { deviceId, socketPath } from '../hypervisor/config.js';
import { hugepageSize } from '../devices/hugepages.js';
import * as validate from '../validate.js';

/** Guest RAM on host hugepages, and hugepages the guest kernel reserves for its containers. */
export interface SandboxHugepages {
  /**
   * Back guest RAM with host hugepages (default true): vmpod reserves `memoryMiB / pageSize`
   * pages, mounts a hugetlbfs for them and gives QEMU `-object memory-backend-file,mem-path=
   * MOUNT,share=on`. Everything is released on stop and delete.
   */
  backRam?: boolean;
  /** Host page size for guest RAM: `2M` (default) or `1G`. */
  pageSize?: number | string;
  /** Fault all guest RAM in at start (`prealloc=on`; default true): the VM cannot run short later. */
  prealloc?: boolean;
  /**
   * 2 MiB pages the guest kernel reserves at boot (`hugepagesz=2M hugepages=N`), for DPDK-style
   * programs in containers (OCI `linux.resources.hugepageLimits`, hugepages volumes). Taken from
   * guest RAM. Default: what the sandbox's hugepages volumes need, else 0.
   */
  guestPages?: number;
}

/** A NIC whose data plane is a vhost-user backend (DPDK testpmd, OVS-DPDK, VPP). */
export interface VhostUserNic {
  /** Device id in the VM (default `vhu0`, `vhu1`, ...). */
  id?: string;
  /** The backend's unix socket. */
  socket: string;
  /**
   * `client` (default): the backend listens on `socket` and the VM connects (it must exist
   * before the sandbox starts); `server`: the VM listens and the backend connects.
   */
  mode?: 'client' | 'server';
  mac?: string;
  /** Queue pairs (default 1). */
  queues?: number;
  mtu?: number;
  /** q35: put the NIC on a PCIe root port of its own (default true): the guest finds it by PCI path. */
  rootPort?: boolean;
}

/** A host PCI device (an SR-IOV VF, a NIC) passed through to the VM with VFIO. */
export interface PciPassthrough {
  /** Host PCI address `DDDD:BB:DD.F`. */
  address: string;
  /** Device id in the VM (default `hostdev0`, ...). */
  id?: string;
  /** Take the device even if its netdev is up or has addresses (default false). */
  force?: boolean;
}

/** A checked {@link VhostUserNic}. */
export type ResolvedVhostUserNic = Required<Pick<VhostUserNic, 'id' | 'socket' | 'mode' | 'rootPort'>> & Pick<VhostUserNic, 'mac' | 'queues' | 'mtu'>;

/** The checked NFV fields of a sandbox config. */
export interface ResolvedNfvConfig {
  hugepages?: { backRam: boolean; pageSizeBytes: number; prealloc: boolean; guestPages: number };
  vhostUser: ResolvedVhostUserNic[];
  devices: { address: string; id: string; force: boolean }[];
  ksm: boolean;
  /** sysfs root of the host (default `/sys`); another tree in tests. */
  sysfs: string;
}

const HUGEPAGES_KEYS = new Set(['backRam', 'pageSize', 'prealloc', 'guestPages']);
const NIC_KEYS = new Set(['id', 'socket', 'mode', 'mac', 'queues', 'mtu', 'rootPort']);
const DEVICE_KEYS = new Set(['address', 'id', 'force']);

function keys(value: object, allowed: Set<string>, field: string): void {
  for (const key of Object.keys(value)) {
    if (!allowed.has(key)) throw new InvalidArgumentError(`${field}.${key}`, 'unknown field');
  }
}

function object(value: unknown, field: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new InvalidArgumentError(field, 'must be an object');
  return value as Record<string, unknown>;
}

function bool(value: unknown, field: string, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw new InvalidArgumentError(field, 'must be true or false');
  return value;
}

function array(value: unknown, field: string): unknown[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new InvalidArgumentError(field, 'must be an array');
  return value;
}

/** The NFV fields of a sandbox config, as given. */
export interface NfvConfigInput {
  hugepages?: boolean | SandboxHugepages;
  vhostUser?: VhostUserNic[];
  devices?: PciPassthrough[];
  ksm?: boolean;
  sysfs?: string;
}

/**
 * Checks the NFV fields; `memoryMiB` and `machine` are the sandbox's, `volumePages` the 2 MiB
 * pages its hugepages volumes need. Throws {@link InvalidArgumentError}; no side effects.
 */
export function resolveNfvConfig(
  input: NfvConfigInput,
  sandbox: { memoryMiB: number; machine: string; sharedMemory: boolean; volumePages: number },
): ResolvedNfvConfig {
  const resolved: ResolvedNfvConfig = {
    vhostUser: [],
    devices: [],
    ksm: bool(input.ksm, 'ksm', false),
    sysfs: validate.absolutePath(input.sysfs ?? '/sys', 'sysfs'),
  };
  const hp = input.hugepages;
  if (hp !== undefined && hp !== false) {
    const h = hp === true ? {} : object(hp, 'hugepages');
    keys(h, HUGEPAGES_KEYS, 'hugepages');
    const pageSizeBytes = hugepageSize(h['pageSize'] ?? '2M', 'hugepages.pageSize');
    const backRam = bool(h['backRam'], 'hugepages.backRam', true);
    if (backRam && (sandbox.memoryMiB * 1024 * 1024) % pageSizeBytes !== 0) {
      throw new InvalidArgumentError('memoryMiB', `${sandbox.memoryMiB} MiB is not a multiple of the hugepage size (${pageSizeBytes / 1048576} MiB)`);
    }
    const maxGuest = Math.max(0, Math.floor((sandbox.memoryMiB - 128) / 2));
    const guestPages = h['guestPages'] === undefined ? sandbox.volumePages : validate.integer(h['guestPages'], 'hugepages.guestPages', 0, 2 ** 20);
    if (guestPages < sandbox.volumePages) {
      throw new InvalidArgumentError('hugepages.guestPages', `${guestPages} pages are fewer than the sandbox's hugepages volumes need (${sandbox.volumePages})`);
    }
    if (guestPages > maxGuest) {
      throw new InvalidArgumentError('hugepages.guestPages', `${guestPages} guest pages (2 MiB) leave the guest less than 128 MiB of ${sandbox.memoryMiB} MiB: raise memoryMiB`);
    }
    resolved.hugepages = { backRam, pageSizeBytes, prealloc: bool(h['prealloc'], 'hugepages.prealloc', true), guestPages };
  } else if (sandbox.volumePages > 0) {
    resolved.hugepages = { backRam: false, pageSizeBytes: 2 * 1024 * 1024, prealloc: false, guestPages: sandbox.volumePages };
  }

  const ids = new Set<string>();
  const uniqueId = (id: string, field: string): string => {
    if (ids.has(id)) throw new InvalidArgumentError(field, `duplicate device id "${id}"`);
    ids.add(id);
    return id;
  };
  array(input.vhostUser, 'vhostUser').forEach((value, i) => {
    const field = `vhostUser[${i}]`;
    const n = object(value, field);
    keys(n, NIC_KEYS, field);
    const nic: ResolvedVhostUserNic = {
      id: uniqueId(deviceId(n['id'] ?? `vhu${i}`, `${field}.id`), `${field}.id`),
      socket: socketPath(n['socket'], `${field}.socket`),
      mode: n['mode'] === undefined ? 'client' : n['mode'] === 'client' || n['mode'] === 'server' ? n['mode'] : badMode(field),
      rootPort: bool(n['rootPort'], `${field}.rootPort`, sandbox.machine === 'q35') && sandbox.machine === 'q35',
    };
    if (n['mac'] !== undefined) nic.mac = validate.macAddress(n['mac'], `${field}.mac`);
    if (n['queues'] !== undefined) nic.queues = validate.integer(n['queues'], `${field}.queues`, 1, 64);
    if (n['mtu'] !== undefined) nic.mtu = validate.integer(n['mtu'], `${field}.mtu`, 68, 65535);
    resolved.vhostUser.push(nic);
  });
  if (new Set(resolved.vhostUser.map((n) => n.socket)).size !== resolved.vhostUser.length) {
    throw new InvalidArgumentError('vhostUser', 'two NICs use the same socket');
  }

  const addresses = new Set<string>();
  array(input.devices, 'devices').forEach((value, i) => {
    const field = `devices[${i}]`;
    const d = object(value, field);
    keys(d, DEVICE_KEYS, field);
    const address = validate.pciAddress(d['address'], `${field}.address`);
    if (addresses.has(address)) throw new InvalidArgumentError(`${field}.address`, `${address} is given twice`);
    addresses.add(address);
    resolved.devices.push({
      address,
      id: uniqueId(deviceId(d['id'] ?? `hostdev${i}`, `${field}.id`), `${field}.id`),
      force: bool(d['force'], `${field}.force`, false),
    });
  });
  if (resolved.devices.length > 0 && sandbox.machine !== 'q35') {
    throw new InvalidArgumentError('devices', 'PCI passthrough needs machine "q35" (microvm has no PCI bus)');
  }

  if (resolved.ksm) {
    const shared = [
      sandbox.sharedMemory ? 'the shared filesystem (set sharedFs: false)' : undefined,
      resolved.vhostUser.length > 0 ? 'vhost-user NICs' : undefined,
      resolved.hugepages?.backRam ? 'hugepage-backed RAM' : undefined,
    ].filter((x) => x !== undefined);
    if (shared.length > 0) {
      throw new InvalidArgumentError(
        'ksm',
        `KSM merges only private guest RAM, and ${shared.join(', ')} map${shared.length > 1 ? '' : 's'} it shared: the sandbox would gain nothing`,
      );
    }
  }
  return resolved;
}

function badMode(field: string): never {
  throw new InvalidArgumentError(`${field}.mode`, 'must be "client" or "server"');
}
