/**
 * Hot-plug rollback against a real QEMU (the unit tests use a fake QMP server): the backend
 * steps succeed (getfd + netdev_add, add-fd + blockdev-add, chardev-add + netdev_add) and then
 * QEMU itself refuses the `device_add` (the id is already a device's: the test shell's virtio-serial, vs0). What was
 * added must be gone, as QEMU's own queries tell: `query-fdsets`, `query-named-block-nodes`,
 * `query-chardev`, `info network`, `qom-list /machine/peripheral`, its open fds; then the same
 * port takes a good device. A vhost-user netdev_add does not return before a backend speaks
 * vhost-user on its socket (docs/vhost-user.md): that case has dpdk-testpmd listen.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QmpError } from '../../src/hypervisor/errors.js';
import { INIT_MARKER } from '../../src/guest/init.js';
import { QemuHypervisor } from '../../src/hypervisor/qemu/hypervisor.js';
import type { QemuVm } from '../../src/hypervisor/qemu/vm.js';
import { native } from '../../src/native.js';
import { testGuestAssets } from './guest-fixture.js';
import { makeRunDir, uniqueName, vmConfig } from './hypervisor-fixture.js';
import { Testpmd, testpmdSkipReason } from '../../benchmarks/lib/testpmd.js';

const hasTapOpen = process.getuid?.() === 0 && typeof (native() as unknown as Record<string, unknown>)['tapOpen'] === 'function';
const noTestpmd = await testpmdSkipReason();
const skipReason = process.getuid?.() !== 0 ? 'needs root' : !fs.existsSync('/usr/bin/qemu-system-x86_64') ? 'needs qemu-system-x86_64' : undefined;

/** What QEMU holds that a hot plug adds: devices, block nodes, fd sets, chardevs, netdevs, tun fds. */
interface QemuHoldings {
  peripherals: string[];
  nodes: string[];
  fdsets: unknown[];
  chardevs: string[];
  network: string;
  tunFds: number;
}

describe.skipIf(skipReason)(`hot-plug rollback on a real QEMU${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let vm: QemuVm;
  let runDir: string;

  beforeAll(async () => {
    const { assets } = await testGuestAssets();
    runDir = makeRunDir();
    vm = await new QemuHypervisor().start(vmConfig(assets, runDir, 'q35', { hotplugPorts: 2 }));
    await vm.waitForConsole(INIT_MARKER, { timeoutMs: 120_000 });
  });

  afterAll(async () => {
    try {
      if (vm && !vm.exited) await vm.kill();
    } finally {
      fs.rmSync(runDir, { recursive: true, force: true });
    }
  });

  async function holdings(): Promise<QemuHoldings> {
    const qmp = vm.qmp!;
    const peripherals = (await qmp.execute<{ name: string }[]>('qom-list', { path: '/machine/peripheral' })).map((p) => p.name).sort();
    const nodes = (await qmp.execute<{ 'node-name': string }[]>('query-named-block-nodes')).map((n) => n['node-name']).sort();
    const fdsets = await qmp.execute<unknown[]>('query-fdsets');
    const chardevs = (await qmp.execute<{ label: string }[]>('query-chardev')).map((c) => c.label).sort();
    const network = await qmp.execute<string>('human-monitor-command', { 'command-line': 'info network' });
    let tunFds = 0;
    for (const fd of fs.readdirSync(`/proc/${vm.handle.pid}/fd`)) {
      if (fs.readlinkSync(`/proc/${vm.handle.pid}/fd/${fd}`, { encoding: 'utf8' }) === '/dev/net/tun') tunFds++;
    }
    return { peripherals, nodes, fdsets, chardevs, network, tunFds };
  }

  it('virtio-blk: add-fd and both blockdev-adds are undone when device_add is refused', async () => {
    const image = path.join(runDir, 'rb.raw');
    fs.writeFileSync(image, Buffer.alloc(1024 * 1024));
    const before = await holdings();
    expect(before.peripherals).toContain('vs0');
    const refused = await vm.hotplug({ kind: 'virtio-blk', id: 'vs0', path: image }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(QmpError);
    expect((refused as Error).message).toMatch(/Duplicate device ID 'vs0'|duplicate.*vs0/iu);
    expect(await holdings()).toEqual(before);
    // Nothing was consumed: the first free port takes a good device, which unplugs cleanly.
    expect(await vm.hotplug({ kind: 'virtio-blk', id: 'rbok', path: image })).toMatchObject({ id: 'rbok', port: 'rp0' });
    expect((await holdings()).nodes).toEqual([...before.nodes, 'blk-rbok', 'file-rbok'].sort());
    await vm.unplug('rbok', { timeoutMs: 60_000 });
    expect(await holdings()).toEqual(before);
  });

  it.skipIf(!hasTapOpen)('virtio-net on a tap fd: getfd and netdev_add are undone when device_add is refused; QEMU keeps no tun fd', async () => {
    const ns = uniqueName();
    execFileSync('ip', ['netns', 'add', ns]);
    try {
      const tap = `${ns}t`;
      const before = await holdings();
      const { fds } = await native().tapOpen(`/run/netns/${ns}`, { name: tap, vnetHdr: true, exclusive: true });
      let refused: unknown;
      try {
        refused = await vm.hotplug({ kind: 'virtio-net', id: 'vs0', tap: { fds }, mac: '02:00:00:00:0c:02' }).catch((e: unknown) => e);
      } finally {
        for (const fd of fds) fs.closeSync(fd);
      }
      expect(refused).toBeInstanceOf(QmpError);
      expect((refused as Error).message).toMatch(/Duplicate device ID 'vs0'|duplicate.*vs0/iu);
      const after = await holdings();
      expect(after.network).not.toContain('net-vs0');
      expect(after).toEqual(before);
      // QEMU's copy of the fd was closed by the rollback and ours are closed: the tap goes.
      const deadline = Date.now() + 10_000;
      let gone = false;
      while (!gone && Date.now() < deadline) {
        try {
          execFileSync('ip', ['-n', ns, 'link', 'show', tap], { stdio: 'ignore' });
          await new Promise((r) => setTimeout(r, 50));
        } catch {
          gone = true;
        }
      }
      expect(gone).toBe(true);
    } finally {
      execFileSync('ip', ['netns', 'delete', ns]);
    }
  });

  it.skipIf(noTestpmd)('vhost-user-net (client mode, testpmd listening): chardev-add and netdev_add are undone when device_add is refused', async () => {
    const testpmd = await Testpmd.start({ socket: path.join(runDir, 'vu.sock'), forwardMode: 'rxonly', prefix: `${uniqueName()}r` });
    try {
      const before = await holdings();
      const refused = await vm.hotplug({ kind: 'vhost-user-net', id: 'vs0', socket: testpmd.options.socket, mode: 'client', mac: '02:00:00:00:0c:03' }).catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(QmpError);
      expect((refused as Error).message).toMatch(/Duplicate device ID 'vs0'|duplicate.*vs0/iu);
      const after = await holdings();
      expect(after.chardevs).not.toContain('chr-vs0');
      expect(after.network).not.toContain('net-vs0');
      expect(after).toEqual(before);
      // The same plug again gets as far as device_add (a chardev or netdev left over would be
      // refused first, as a duplicate of its own id), and is undone again.
      const again = await vm.hotplug({ kind: 'vhost-user-net', id: 'vs0', socket: testpmd.options.socket, mode: 'client' }).catch((e: unknown) => e);
      expect(again).toBeInstanceOf(QmpError);
      expect((again as Error).message).toBe((refused as Error).message);
      expect(await holdings()).toEqual(before);
    } finally {
      await testpmd.stop();
    }
  });
});
