/**
 * NFV operations on a running sandbox: hot plug and unplug of vhost-user NICs and of PCI
 * devices (VFIO), what the sandbox holds, and KSM sharing across sandboxes.
 *
 * @module
 */
import { readKsm, ksmProcessStats, type KsmStatus } from '../devices/ksm.js';
import * as validate from '../validate.js';
import type { GuestContext } from '../sandbox/resource.js';
import { deviceId } from '../hypervisor/config.js';
import { resolveNfvConfig, type PciPassthrough, type VhostUserNic } from './config.js';
import { hotplugNic, unplugNic, vhostUserNics, VHOST_USER_KIND, type VhostUserNicInfo } from './vhost-user.js';
import { hotplugPci, pciDevices, unplugPci, PCI_DEVICES_KIND, type PciDeviceInfo } from './pci-devices.js';

/** What these functions need of a sandbox (a {@link Sandbox}). */
export interface NfvHost {
  readonly id: string;
  readonly pid: number | undefined;
  withResource<T>(kind: string, fn: (ctx: GuestContext) => Promise<T>, signal?: AbortSignal): Promise<T>;
}

/** Options of calls that can be cancelled. */
export interface NfvCallOptions {
  signal?: AbortSignal;
}

/**
 * Hot plugs a vhost-user NIC into a running q35 sandbox whose guest RAM is shared (sharedFs,
 * hugepages or a cold vhost-user NIC). Equivalent: QMP `chardev-add` (socket, client or server),
 * `netdev_add vhost-user`, `device_add virtio-net-pci,vectors=0,bus=rpN`.
 */
export async function hotplugVhostUserNic(sandbox: NfvHost, nic: VhostUserNic, options: NfvCallOptions = {}): Promise<VhostUserNicInfo> {
  return sandbox.withResource(
    VHOST_USER_KIND,
    async (ctx) => {
      const [resolved] = resolveNfvConfig(
        { vhostUser: [{ ...nic, id: nic.id ?? `vhu${vhostUserNics(ctx.state).length + (ctx.config.vhostUser ?? []).length}` }] },
        { memoryMiB: ctx.config.memoryMiB, machine: ctx.config.machine, sharedMemory: false, volumePages: 0 },
      ).vhostUser;
      return hotplugNic(ctx, { ...resolved!, rootPort: false });
    },
    options.signal,
  );
}

/** Unplugs a vhost-user NIC (`device_del`, then its netdev and chardev). */
export async function unplugVhostUserNic(sandbox: NfvHost, id: string, options: NfvCallOptions = {}): Promise<void> {
  deviceId(id, 'id');
  await sandbox.withResource(VHOST_USER_KIND, (ctx) => unplugNic(ctx, id), options.signal);
}

/**
 * Binds a host PCI device (with its IOMMU group) to vfio-pci and hot plugs it into a running
 * q35 sandbox (QMP `device_add vfio-pci,host=ADDR,bus=rpN`). On failure the drivers are restored.
 */
export async function hotplugPciDevice(sandbox: NfvHost, device: PciPassthrough, options: NfvCallOptions = {}): Promise<PciDeviceInfo> {
  return sandbox.withResource(
    PCI_DEVICES_KIND,
    async (ctx) => {
      const [resolved] = resolveNfvConfig(
        { devices: [{ ...device, id: device.id ?? `hostdev${pciDevices(ctx.state).length + (ctx.config.devices ?? []).length}` }] },
        { memoryMiB: ctx.config.memoryMiB, machine: ctx.config.machine, sharedMemory: false, volumePages: 0 },
      ).devices;
      return hotplugPci(ctx, resolved!);
    },
    options.signal,
  );
}

/** Unplugs a passed-through device and puts its IOMMU group back on the original drivers. */
export async function unplugPciDevice(sandbox: NfvHost, id: string, options: NfvCallOptions = {}): Promise<void> {
  deviceId(id, 'id');
  await sandbox.withResource(PCI_DEVICES_KIND, (ctx) => unplugPci(ctx, id), options.signal);
}

/** The NFV devices of a running sandbox, with their guest PCI paths. */
export interface SandboxNfvDevices {
  vhostUser: VhostUserNicInfo[];
  devices: PciDeviceInfo[];
}

/** Lists the vhost-user NICs and passed-through devices of a running sandbox. */
export async function sandboxNfvDevices(sandbox: NfvHost, options: NfvCallOptions = {}): Promise<SandboxNfvDevices> {
  const vhostUser = await sandbox.withResource(VHOST_USER_KIND, async (ctx) => vhostUserNics(ctx.state), options.signal);
  const devices = await sandbox.withResource(PCI_DEVICES_KIND, async (ctx) => pciDevices(ctx.state), options.signal);
  return { vhostUser, devices };
}

/** KSM sharing, host-wide and per sandbox. */
export interface KsmReport {
  host: KsmStatus;
  sandboxes: {
    id: string;
    pid: number;
    /** Guest RAM pages of this sandbox that KSM merged (`ksm_merging_pages`). */
    mergingPages: number;
    /** Bytes this sandbox saves, net of KSM metadata (`ksm_process_profit`), when the kernel says. */
    profitBytes: number | null;
    /** Whether KSM scans its RAM at all. */
    mergeable: boolean | null;
  }[];
}

/**
 * What KSM shares: host-wide counters (`/sys/kernel/mm/ksm`) and, per running sandbox, the
 * pages of its QEMU that are merged (`/proc/PID/ksm_stat`). Sandboxes need `ksm: true`.
 */
export async function ksmReport(sandboxes: readonly NfvHost[], options: { sysfs?: string } = {}): Promise<KsmReport> {
  const host = await readKsm(options.sysfs === undefined ? {} : { sysfs: options.sysfs });
  const rows: KsmReport['sandboxes'] = [];
  for (const s of sandboxes) {
    if (s.pid === undefined) continue;
    const stats = await ksmProcessStats(validate.integer(s.pid, 'pid', 1, 2 ** 22));
    rows.push({ id: s.id, pid: s.pid, mergingPages: stats.mergingPages, profitBytes: stats.profit, mergeable: stats.mergeable });
  }
  return { host, sandboxes: rows };
}
