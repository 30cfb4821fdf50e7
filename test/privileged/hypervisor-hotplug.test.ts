import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { NotFoundError } from '../../src/errors.js';
import type { GuestAssets } from '../../src/guest/index.js';
import { INIT_MARKER } from '../../src/guest/init.js';
import { QemuHypervisor } from '../../src/hypervisor/qemu/hypervisor.js';
import type { QemuVm } from '../../src/hypervisor/qemu/vm.js';
import { native } from '../../src/native.js';
import { testGuestAssets } from './guest-fixture.js';
import { GuestShell, makeRunDir, uniqueName, vmConfig } from './hypervisor-fixture.js';

const hypervisor = new QemuHypervisor();
let assets: GuestAssets;
const cleanups: (() => Promise<void> | void)[] = [];

beforeAll(async () => {
  assets = (await testGuestAssets()).assets;
});
afterEach(async () => {
  for (const step of cleanups.splice(0).reverse()) {
    try {
      await step();
    } catch {
      // keep cleaning
    }
  }
});

async function bootQ35(): Promise<{ vm: QemuVm; shell: GuestShell; runDir: string }> {
  const runDir = makeRunDir();
  cleanups.push(() => fs.rmSync(runDir, { recursive: true, force: true }));
  const vm = await hypervisor.start(vmConfig(assets, runDir, 'q35', { hotplugPorts: 2 }));
  cleanups.push(async () => {
    if (!vm.exited) await vm.kill();
  });
  await vm.waitForConsole(INIT_MARKER, { timeoutMs: 120_000 });
  const shell = await GuestShell.connect(path.join(runDir, 'test.sock'));
  cleanups.push(() => shell.close());
  return { vm, shell, runDir };
}

/** Waits until `ip -n NS link show DEV` fails: the kernel unregisters a tap after its last fd closes, a moment later. */
async function linkGone(ns: string, dev: string, timeoutMs = 10_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      execFileSync('ip', ['-n', ns, 'link', 'show', dev], { stdio: 'ignore' });
    } catch {
      return true;
    }
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Polls a guest command until it succeeds. */
async function until(shell: GuestShell, command: string, timeoutMs = 30_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { output, status } = await shell.run(command);
    if (status === 0) return output;
    if (Date.now() > deadline) throw new Error(`guest: "${command}" still failing: ${output}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const hasTapOpen = typeof (native() as unknown as Record<string, unknown>)['tapOpen'] === 'function';

describe('NICs and disks through fds: inherited at spawn, or passed over QMP and hot plugged on q35', () => {
  it.skipIf(!hasTapOpen)('hot-adds a virtio-net on a tap fd passed with SCM_RIGHTS (getfd), pings the netns, then removes it (needs native tapOpen)', async () => {
    const { vm, shell } = await bootQ35();
    const ns = uniqueName();
    execFileSync('ip', ['netns', 'add', ns]);
    cleanups.push(() => {
      execFileSync('ip', ['netns', 'delete', ns]);
    });
    const tap = `${ns}t`;
    const subnet = `10.${200 + (parseInt(ns.slice(2), 16) % 50)}.${parseInt(ns.slice(4), 16) % 250}`;
    const { fds } = await native().tapOpen(`/run/netns/${ns}`, { name: tap, vnetHdr: true, exclusive: true });
    try {
      execFileSync('ip', ['-n', ns, 'addr', 'add', `${subnet}.1/24`, 'dev', tap]);
      execFileSync('ip', ['-n', ns, 'link', 'set', tap, 'up']);
      const result = await vm.hotplug({ kind: 'virtio-net', id: 'n1', tap: { fds }, mac: '02:00:00:00:0a:01' });
      expect(result).toEqual({ id: 'n1', port: 'rp0', pciPath: '10/00' });
    } finally {
      for (const fd of fds) fs.closeSync(fd); // QEMU holds its own copy now
    }
    const iface = (await until(shell, 'grep -l 02:00:00:00:0a:01 /sys/class/net/*/address')).trim().split('/')[4] ?? '';
    expect(iface).toMatch(/^eth\d$/u);
    // The guest finds the device behind the root port the result names.
    expect((await shell.run(`readlink /sys/class/net/${iface}/device`)).output).toBeTruthy();
    expect((await shell.run(`ls /sys/bus/pci/devices/0000:00:10.0/`)).status).toBe(0);
    await shell.run(`ip addr add ${subnet}.2/24 dev ${iface} && ip link set ${iface} up`);
    const ping = await until(shell, `ping -c 1 -W 3 ${subnet}.1`, 30_000);
    expect(ping).toMatch(/1 packets received/);

    await vm.unplug('n1', { timeoutMs: 60_000 });
    expect((await shell.run(`test -e /sys/class/net/${iface}`)).status).not.toBe(0);
    // QEMU closed its fd with netdev_del and ours are closed: the non-persistent tap is gone.
    expect(await linkGone(ns, tap)).toBe(true);
    await expect(vm.unplug('n1')).rejects.toBeInstanceOf(NotFoundError);
  });

  it.skipIf(!hasTapOpen)('microvm: a virtio-net on a tap fd inherited at spawn (fd=3) carries traffic (needs native tapOpen)', async () => {
    const ns = uniqueName();
    execFileSync('ip', ['netns', 'add', ns]);
    cleanups.push(() => {
      execFileSync('ip', ['netns', 'delete', ns]);
    });
    const tap = `${ns}t`;
    const subnet = `10.${200 + (parseInt(ns.slice(2), 16) % 50)}.${parseInt(ns.slice(4), 16) % 250}`;
    const { fds } = await native().tapOpen(`/run/netns/${ns}`, { name: tap, vnetHdr: true, exclusive: true });
    const runDir = makeRunDir();
    cleanups.push(() => fs.rmSync(runDir, { recursive: true, force: true }));
    let vm: QemuVm;
    try {
      execFileSync('ip', ['-n', ns, 'addr', 'add', `${subnet}.1/24`, 'dev', tap]);
      execFileSync('ip', ['-n', ns, 'link', 'set', tap, 'up']);
      vm = await hypervisor.start(vmConfig(assets, runDir, 'microvm', {}, [{ kind: 'virtio-net', id: 'n0', tap: { fds }, mac: '02:00:00:00:0b:01' }]));
    } finally {
      for (const fd of fds) fs.closeSync(fd);
    }
    cleanups.push(async () => {
      if (!vm.exited) await vm.kill();
    });
    await vm.waitForConsole(INIT_MARKER, { timeoutMs: 120_000 });
    const shell = await GuestShell.connect(path.join(runDir, 'test.sock'));
    cleanups.push(() => shell.close());
    const iface = (await until(shell, 'grep -l 02:00:00:00:0b:01 /sys/class/net/*/address')).trim().split('/')[4] ?? '';
    await shell.run(`ip addr add ${subnet}.2/24 dev ${iface} && ip link set ${iface} up`);
    expect(await until(shell, `ping -c 1 -W 3 ${subnet}.1`)).toMatch(/1 packets received/);
    await vm.kill();
    // QEMU's copy was the last: the non-persistent tap goes with the VM.
    expect(await linkGone(ns, tap)).toBe(true);
  });

  it('hot-adds a read-only virtio-blk from an image the host opens and passes in an fd set, reads it in the guest, then removes it', async () => {
    const { vm, shell, runDir } = await bootQ35();
    const image = path.join(runDir, 'disk.raw');
    const signature = `vmpod-disk-${uniqueName()}`;
    fs.writeFileSync(image, Buffer.concat([Buffer.from(signature), Buffer.alloc(1024 * 1024 - signature.length)]));
    // Root-only: QEMU could open it itself here, but the fd set is what makes one that dropped root work.
    fs.chmodSync(image, 0o600);
    const result = await vm.hotplug({ kind: 'virtio-blk', id: 'd1', path: image, readOnly: true, serial: 'hotdisk' });
    expect(result.port).toBe('rp0');
    // QEMU got the image as an fd (add-fd), never its path.
    const sets = await vm.qmp!.execute<{ 'fdset-id': number; fds: { opaque?: string }[] }[]>('query-fdsets');
    expect(sets.flatMap((set) => set.fds.map((f) => f.opaque))).toEqual(['blk-d1']);
    const files = await vm.qmp!.execute<{ 'node-name': string; file: string }[]>('query-named-block-nodes');
    expect(files.find((n) => n['node-name'] === 'file-d1')?.file).toMatch(/^\/dev\/fdset\/\d+$/u);
    const dev = (await until(shell, 'grep -l hotdisk /sys/block/vd*/serial')).trim().split('/')[3] ?? '';
    expect((await shell.run(`head -c ${signature.length} /dev/${dev}`)).output).toBe(signature);
    expect((await shell.run(`cat /sys/block/${dev}/ro`)).output.trim()).toBe('1');

    await vm.unplug('d1', { timeoutMs: 60_000 });
    expect((await shell.run(`test -e /sys/block/${dev}`)).status).not.toBe(0);
    // Both block nodes and the fd set are gone: the id can be used again.
    const nodes = await vm.qmp?.execute<{ 'node-name': string }[]>('query-named-block-nodes');
    expect(nodes?.map((n) => n['node-name'])).not.toContain('blk-d1');
    expect(await vm.qmp!.execute<unknown[]>('query-fdsets')).toEqual([]);
  });
});
