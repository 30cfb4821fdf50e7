import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError, NotFoundError } from '../../src/errors.js';
import { QmpError } from '../../src/hypervisor/errors.js';
import { freeRootPorts, hotplugDevice, unplugDevice } from '../../src/hypervisor/qemu/hotplug.js';
import { QmpClient } from '../../src/hypervisor/qemu/qmp.js';
import { reply, replyError, scripted, startFakeQmp, type FakeQmp, type Handler } from './hypervisor-fake-qmp.js';

let dir: string;
let server: FakeQmp | undefined;
let client: QmpClient | undefined;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-hotplug-'));
});
afterEach(async () => {
  client?.close();
  await server?.close();
  client = undefined;
  server = undefined;
  fs.rmSync(dir, { recursive: true, force: true });
});

/** A q35 VM with root ports rp0..rp2; `busy` ones have a device behind them. */
function q35(busy: string[], extra: Record<string, Handler> = {}): Handler {
  return scripted({
    'qom-list': (m, p) => {
      const target = (m['arguments'] as { path: string }).path;
      if (target === '/machine/peripheral') {
        reply(p, m['id'], [
          { name: 'type', type: 'string' },
          { name: 'rp2', type: 'child<pcie-root-port>' },
          { name: 'rp0', type: 'child<pcie-root-port>' },
          { name: 'rp1', type: 'child<pcie-root-port>' },
          { name: 'vs0', type: 'child<virtio-serial-pci>' },
        ]);
      } else {
        const port = target.split('/').at(-1) ?? '';
        reply(p, m['id'], [{ name: 'type', type: 'string' }, ...(busy.includes(port) ? [{ name: 'child[0]', type: 'link<virtio-net-pci>' }] : [])]);
      }
    },
    ...extra,
  });
}

async function connect(handler: Handler): Promise<{ qmp: QmpClient; fake: FakeQmp }> {
  server = await startFakeQmp(path.join(dir, 'qmp.sock'), handler);
  client = await QmpClient.connect(server.socket);
  return { qmp: client, fake: server };
}

/** The commands after negotiation and port discovery. */
function commands(fake: FakeQmp): unknown[] {
  return fake.received.filter((m) => m['execute'] !== 'qmp_capabilities' && m['execute'] !== 'qom-list').map((m) => [m['execute'], m['arguments']]);
}

describe('hotplug over QMP', () => {
  it('finds free root ports in numeric order', async () => {
    const { qmp } = await connect(q35(['rp0']));
    await expect(freeRootPorts(qmp)).resolves.toEqual(['rp1', 'rp2']);
  });

  it('virtio-net on tap fds: getfd per queue, netdev_add, device_add on the first free port', async () => {
    const { qmp, fake } = await connect(q35(['rp0']));
    const fd = fs.openSync('/dev/null', 'r');
    try {
      const result = await hotplugDevice(qmp, { kind: 'virtio-net', id: 'n1', tap: { fds: [fd, fd] }, mac: '02:00:00:00:00:09' }, { kvm: false });
      expect(result).toEqual({ id: 'n1', port: 'rp1', pciPath: '11/00' });
    } finally {
      fs.closeSync(fd);
    }
    expect(commands(fake)).toEqual([
      ['getfd', { fdname: 'fd-n1-0' }],
      ['getfd', { fdname: 'fd-n1-1' }],
      ['netdev_add', { type: 'tap', id: 'net-n1', fds: 'fd-n1-0:fd-n1-1', vhost: false }],
      ['device_add', { driver: 'virtio-net-pci', netdev: 'net-n1', romfile: '', mac: '02:00:00:00:00:09', mq: true, vectors: 6, id: 'n1', bus: 'rp1' }],
    ]);
  });

  it('passes a block image as an fd set (the host opens it) and rolls back what it added when device_add fails', async () => {
    const image = path.join(dir, 'a.raw');
    fs.writeFileSync(image, Buffer.alloc(4096));
    const { qmp, fake } = await connect(
      q35([], {
        'add-fd': (m, p) => reply(p, m['id'], { 'fdset-id': 3, fd: 12 }),
        device_add: (m, p) => replyError(p, m['id'], 'GenericError', 'Bus rp0 is full'),
      }),
    );
    const error = await hotplugDevice(qmp, { kind: 'virtio-blk', id: 'd1', path: image, readOnly: true }, { kvm: false }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QmpError);
    expect(commands(fake)).toEqual([
      ['add-fd', { opaque: 'blk-d1' }],
      ['blockdev-add', { driver: 'file', 'node-name': 'file-d1', filename: '/dev/fdset/3', 'read-only': true }],
      ['blockdev-add', { driver: 'raw', 'node-name': 'blk-d1', file: 'file-d1', 'read-only': true }],
      ['device_add', { driver: 'virtio-blk-pci', drive: 'blk-d1', id: 'd1', bus: 'rp0' }],
      ['blockdev-del', { 'node-name': 'blk-d1' }],
      ['blockdev-del', { 'node-name': 'file-d1' }],
      ['remove-fd', { 'fdset-id': 3 }],
    ]);
    // A missing image fails before QEMU is asked anything.
    await expect(hotplugDevice(qmp, { kind: 'virtio-blk', id: 'd2', path: path.join(dir, 'missing.raw') }, { kvm: false })).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('closes passed fds when netdev_add fails', async () => {
    const { qmp, fake } = await connect(q35([], { netdev_add: (m, p) => replyError(p, m['id'], 'GenericError', 'bad fd') }));
    const fd = fs.openSync('/dev/null', 'r');
    try {
      await expect(hotplugDevice(qmp, { kind: 'virtio-net', id: 'n2', tap: { fds: [fd] } }, { kvm: false })).rejects.toBeInstanceOf(QmpError);
    } finally {
      fs.closeSync(fd);
    }
    expect(commands(fake).slice(-1)).toEqual([['closefd', { fdname: 'fd-n2-0' }]]);
  });

  it('vfio-pci and vhost-user-net (vectors=0 under TCG)', async () => {
    const { qmp, fake } = await connect(q35([]));
    await hotplugDevice(qmp, { kind: 'vfio-pci', id: 'vf0', host: '0000:3b:02.1' }, { kvm: false });
    await hotplugDevice(qmp, { kind: 'vhost-user-net', id: 'du0', socket: '/run/dpdk/vhu.sock', mode: 'client' }, { kvm: false });
    expect(commands(fake)).toEqual([
      ['device_add', { driver: 'vfio-pci', host: '0000:3b:02.1', id: 'vf0', bus: 'rp0' }],
      ['chardev-add', { id: 'chr-du0', backend: { type: 'socket', data: { addr: { type: 'unix', data: { path: '/run/dpdk/vhu.sock' } }, server: false } } }],
      ['netdev_add', { type: 'vhost-user', id: 'net-du0', chardev: 'chr-du0' }],
      ['device_add', { driver: 'virtio-net-pci', netdev: 'net-du0', romfile: '', vectors: 0, id: 'du0', bus: 'rp0' }],
    ]);
  });

  it('refuses without a free port, and refuses bad devices before any command', async () => {
    const { qmp, fake } = await connect(q35(['rp0', 'rp1', 'rp2']));
    await expect(hotplugDevice(qmp, { kind: 'vfio-pci', id: 'vf0', host: '0000:3b:02.1' }, { kvm: false })).rejects.toThrow(/no free PCIe root port/);
    await expect(hotplugDevice(qmp, { kind: 'vfio-pci', id: 'vf,0', host: '0000:3b:02.1' }, { kvm: false })).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(commands(fake)).toEqual([]);
  });

  it('unplug waits for DEVICE_DELETED of the device itself, then removes the backend', async () => {
    const { qmp, fake } = await connect(
      scripted({
        'qom-get': (m, p) => reply(p, m['id'], 'virtio-net-pci'),
        device_del: (m, p) => {
          reply(p, m['id'], {});
          setTimeout(() => {
            p.write('{"timestamp": {"seconds": 1, "microseconds": 0}, "event": "DEVICE_DELETED", "data": {"path": "/machine/peripheral/n1/virtio-backend"}}\r\n');
            p.write('{"timestamp": {"seconds": 1, "microseconds": 1}, "event": "DEVICE_DELETED", "data": {"device": "n1", "path": "/machine/peripheral/n1"}}\r\n');
          }, 30);
        },
      }),
    );
    await unplugDevice(qmp, 'n1', {});
    expect(commands(fake)).toEqual([
      ['qom-get', { path: '/machine/peripheral/n1', property: 'type' }],
      ['device_del', { id: 'n1' }],
      ['netdev_del', { id: 'net-n1' }],
      ['chardev-remove', { id: 'chr-n1' }],
    ]);
  });

  it('unplug of an unknown device is NotFoundError; a guest that never lets go times out', async () => {
    const { qmp } = await connect(
      scripted({
        'qom-get': (m, p) =>
          (m['arguments'] as { path: string }).path.endsWith('/ghost') ? replyError(p, m['id'], 'DeviceNotFound', 'no') : reply(p, m['id'], 'virtio-blk-pci'),
      }),
    );
    await expect(unplugDevice(qmp, 'ghost', {})).rejects.toBeInstanceOf(NotFoundError);
    await expect(unplugDevice(qmp, 'd1', { timeoutMs: 100 })).rejects.toThrow(/DEVICE_DELETED/);
  });
});
