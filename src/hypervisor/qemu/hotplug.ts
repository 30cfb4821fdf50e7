/**
 * Hotplug over QMP on q35: each device kind becomes the QMP commands that add its backend
 * (`getfd` + `netdev_add`, `chardev-add`, `blockdev-add`) and then the device on a free PCIe
 * root port (`device_add`); removal waits for the guest to release the device
 * (`DEVICE_DELETED` for that id) before the backend goes.
 *
 * @module
 */
import fs from 'node:fs';
import { InvalidArgumentError, NotFoundError } from '../../errors.js';
import { checkDevice } from '../config.js';
import { QmpError } from '../errors.js';
import type { HotplugResult, VmDevice } from '../hypervisor.js';
import { blockDriver, rootPortPciPath } from './cmdline.js';
import type { QmpClient } from './qmp.js';

/** Options of the hotplug helpers. */
export interface HotplugOptions {
  readonly signal?: AbortSignal | undefined;
  /** Per QMP command, and for the guest to release a device on unplug (default 30 s). */
  readonly timeoutMs?: number | undefined;
  /** True for KVM, where vhost-user NICs may keep MSI-X (TCG needs vectors=0). */
  readonly kvm: boolean;
}

interface QomProperty {
  name: string;
  type: string;
}

/** Root port ids (`rpN`) that have no device behind them, in order. Equivalent of `info qtree`. */
export async function freeRootPorts(qmp: QmpClient, options: { signal?: AbortSignal | undefined } = {}): Promise<string[]> {
  const peripherals = await qmp.execute<QomProperty[]>('qom-list', { path: '/machine/peripheral' }, options);
  const ports = peripherals
    .filter((p) => p.type === 'child<pcie-root-port>' && /^rp\d+$/u.test(p.name))
    .map((p) => p.name)
    .sort((a, b) => Number(a.slice(2)) - Number(b.slice(2)));
  const free: string[] = [];
  for (const port of ports) {
    // The port's secondary bus is a child object named like the port.
    const bus = await qmp.execute<QomProperty[]>('qom-list', { path: `/machine/peripheral/${port}/${port}` }, options);
    if (!bus.some((p) => p.name.startsWith('child['))) free.push(port);
  }
  return free;
}

/** Best-effort removal of a backend during a rollback or after an unplug. */
async function quietly(qmp: QmpClient, command: string, args: Record<string, unknown>): Promise<void> {
  await qmp.execute(command, args, { timeoutMs: 10_000 }).catch(() => undefined);
}

function nicArgs(device: { mac?: string; mtu?: number }, netdev: string, queues: number, vectors: number | undefined): Record<string, unknown> {
  const args: Record<string, unknown> = { netdev, romfile: '' };
  if (device.mac !== undefined) args['mac'] = device.mac;
  if (device.mtu !== undefined) args['host_mtu'] = device.mtu;
  if (queues > 1) args['mq'] = true;
  if (vectors !== undefined) args['vectors'] = vectors;
  return args;
}

/**
 * Hot plugs `device` on the first free root port. Equivalent of the HMP sequence
 * `getfd fd-ID-0` (with the fd attached), `netdev_add tap,id=net-ID,fd=fd-ID-0`,
 * `device_add virtio-net-pci,id=ID,netdev=net-ID,bus=rpN`. On failure every step done is undone.
 */
export async function hotplugDevice(qmp: QmpClient, device: VmDevice, options: HotplugOptions): Promise<HotplugResult> {
  checkDevice(device, 'device');
  const call = { signal: options.signal, timeoutMs: options.timeoutMs ?? 30_000 };
  const [port] = await freeRootPorts(qmp, call);
  if (port === undefined) throw new InvalidArgumentError('device', 'no free PCIe root port left for hotplug: start the VM with more hotplugPorts');
  const undo: (() => Promise<void>)[] = [];
  const id = device.id;
  try {
    let driverArgs: Record<string, unknown>;
    switch (device.kind) {
      case 'virtio-net': {
        const netdev = `net-${id}`;
        let queues: number;
        if (device.vhost === true) throw new InvalidArgumentError('device.vhost', 'hotplug does not support vhost-net');
        if ('ifname' in device.tap) {
          queues = device.tap.queues ?? 1;
          const args: Record<string, unknown> = { type: 'tap', id: netdev, ifname: device.tap.ifname, script: 'no', downscript: 'no', vhost: false };
          if (queues > 1) args['queues'] = queues;
          await qmp.execute('netdev_add', args, call);
        } else {
          queues = device.tap.fds.length;
          const names: string[] = [];
          for (const [i, fd] of device.tap.fds.entries()) {
            const fdname = `fd-${id}-${i}`;
            await qmp.execute('getfd', { fdname }, { ...call, fds: [fd] });
            names.push(fdname);
            undo.push(() => quietly(qmp, 'closefd', { fdname }));
          }
          await qmp.execute(
            'netdev_add',
            queues > 1 ? { type: 'tap', id: netdev, fds: names.join(':'), vhost: false } : { type: 'tap', id: netdev, fd: names[0], vhost: false },
            call,
          );
          undo.length = 0; // netdev_add took the fds out of the monitor
        }
        undo.push(() => quietly(qmp, 'netdev_del', { id: netdev }));
        driverArgs = { driver: 'virtio-net-pci', ...nicArgs(device, netdev, queues, queues > 1 ? 2 * queues + 2 : undefined) };
        break;
      }
      case 'vhost-user-net': {
        const chardev = `chr-${id}`;
        const netdev = `net-${id}`;
        const queues = device.queues ?? 1;
        const server = device.mode === 'server';
        await qmp.execute(
          'chardev-add',
          { id: chardev, backend: { type: 'socket', data: { addr: { type: 'unix', data: { path: device.socket } }, server, ...(server ? { wait: false } : {}) } } },
          call,
        );
        undo.push(() => quietly(qmp, 'chardev-remove', { id: chardev }));
        await qmp.execute('netdev_add', { type: 'vhost-user', id: netdev, chardev, ...(queues > 1 ? { queues } : {}) }, call);
        undo.push(() => quietly(qmp, 'netdev_del', { id: netdev }));
        driverArgs = { driver: 'virtio-net-pci', ...nicArgs(device, netdev, queues, options.kvm ? (queues > 1 ? 2 * queues + 2 : undefined) : 0) };
        break;
      }
      case 'vhost-user-fs': {
        const chardev = `chr-${id}`;
        await qmp.execute(
          'chardev-add',
          { id: chardev, backend: { type: 'socket', data: { addr: { type: 'unix', data: { path: device.socket } }, server: false } } },
          call,
        );
        undo.push(() => quietly(qmp, 'chardev-remove', { id: chardev }));
        driverArgs = { driver: 'vhost-user-fs-pci', chardev, tag: device.tag, ...(device.queueSize === undefined ? {} : { 'queue-size': device.queueSize }) };
        break;
      }
      case 'virtio-blk': {
        const readOnly = device.readOnly === true;
        // The host opens the image and hands QEMU the fd (an fd set): QEMU never resolves the
        // path itself, so the open is the host's, and a QEMU that dropped root can use it.
        const fd = fs.openSync(device.path, readOnly ? 'r' : 'r+');
        let fdset: number;
        try {
          ({ 'fdset-id': fdset } = await qmp.execute<{ 'fdset-id': number }>('add-fd', { opaque: `blk-${id}` }, { ...call, fds: [fd] }));
        } finally {
          fs.closeSync(fd);
        }
        undo.push(() => quietly(qmp, 'remove-fd', { 'fdset-id': fdset }));
        await qmp.execute('blockdev-add', { driver: blockDriver(device.path), 'node-name': `file-${id}`, filename: `/dev/fdset/${fdset}`, 'read-only': readOnly }, call);
        undo.push(() => quietly(qmp, 'blockdev-del', { 'node-name': `file-${id}` }));
        await qmp.execute('blockdev-add', { driver: device.format ?? 'raw', 'node-name': `blk-${id}`, file: `file-${id}`, 'read-only': readOnly }, call);
        undo.push(() => quietly(qmp, 'blockdev-del', { 'node-name': `blk-${id}` }));
        driverArgs = { driver: 'virtio-blk-pci', drive: `blk-${id}`, ...(device.serial === undefined ? {} : { serial: device.serial }) };
        break;
      }
      case 'vfio-pci':
        driverArgs = { driver: 'vfio-pci', host: device.host };
        break;
      case 'vsock':
        driverArgs = { driver: 'vhost-vsock-pci', 'guest-cid': device.cid };
        break;
      case 'virtio-serial':
      case 'virtio-9p':
        throw new InvalidArgumentError('device.kind', `${device.kind} cannot be hot plugged: give it to the VM at start`);
    }
    await qmp.execute('device_add', { ...driverArgs, id, bus: port }, call);
    return { id, port, pciPath: rootPortPciPath(port) };
  } catch (error) {
    for (const step of undo.reverse()) await step();
    throw error;
  }
}

/**
 * Removes a device and then its backend. Equivalent of `device_del ID`, then (once the guest
 * released it: the `DEVICE_DELETED` event whose `device` is ID, not the one for its virtio
 * backend) `netdev_del net-ID` / `blockdev-del` / `chardev-remove`.
 */
export async function unplugDevice(qmp: QmpClient, id: string, options: Omit<HotplugOptions, 'kvm'>): Promise<void> {
  const call = { signal: options.signal, timeoutMs: options.timeoutMs ?? 30_000 };
  let type: string;
  try {
    type = await qmp.execute<string>('qom-get', { path: `/machine/peripheral/${id}`, property: 'type' }, call);
  } catch (error) {
    if (error instanceof QmpError && error.qmpClass === 'DeviceNotFound') throw new NotFoundError('device', id, { cause: error });
    throw error;
  }
  const deleted = qmp.waitForEvent('DEVICE_DELETED', (data) => data.device === id, call);
  deleted.catch(() => undefined);
  await qmp.execute('device_del', { id }, call);
  await deleted;
  if (type.startsWith('virtio-net')) {
    await quietly(qmp, 'netdev_del', { id: `net-${id}` });
    await quietly(qmp, 'chardev-remove', { id: `chr-${id}` });
  } else if (type.startsWith('vhost-user-fs')) {
    await quietly(qmp, 'chardev-remove', { id: `chr-${id}` });
  } else if (type.startsWith('virtio-blk')) {
    await quietly(qmp, 'blockdev-del', { 'node-name': `blk-${id}` });
    await quietly(qmp, 'blockdev-del', { 'node-name': `file-${id}` });
    // The fd set its image was passed in (QEMU closes the fd once nothing uses it).
    const sets = await qmp.execute<{ 'fdset-id': number; fds: { opaque?: string }[] }[]>('query-fdsets', {}, call).catch(() => []);
    for (const set of sets) if (set.fds.some((f) => f.opaque === `blk-${id}`)) await quietly(qmp, 'remove-fd', { 'fdset-id': set['fdset-id'] });
  }
}
