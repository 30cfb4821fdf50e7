import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import type { GuestAssets } from '../../src/guest/index.js';
import { INIT_MARKER } from '../../src/guest/init.js';
import { DaemonError } from '../../src/hypervisor/errors.js';
import { QemuHypervisor } from '../../src/hypervisor/qemu/hypervisor.js';
import { Virtiofsd } from '../../src/hypervisor/virtiofsd.js';
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

function tempDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The sandboxed worker virtiofsd forks once QEMU connects (it pivot_roots into the share). */
function children(pid: number): number[] {
  try {
    return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/u).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

describe('virtio-fs with Debian virtiofsd', () => {
  it.each(['q35', 'microvm'] as const)('%s: the guest mounts the share, reads and writes; virtiofsd sees nothing else of the host', async (machine) => {
    const runDir = makeRunDir();
    cleanups.push(() => fs.rmSync(runDir, { recursive: true, force: true }));
    const share = tempDir('vt-share-');
    const content = `hello from the host ${uniqueName()}\n`;
    fs.writeFileSync(path.join(share, 'hello.txt'), content);
    fs.mkdirSync(path.join(share, 'sub'));

    const socket = path.join(runDir, 'fs0.sock');
    const daemon = await Virtiofsd.start({ sharedDir: share, socket, logFile: path.join(runDir, 'virtiofsd.log') });
    cleanups.push(() => daemon.stop());
    expect(fs.lstatSync(socket).isSocket()).toBe(true);

    const vm = await hypervisor.start(
      vmConfig(assets, runDir, machine, { memory: { sizeMiB: 256, backend: { kind: 'memfd' } } }, [
        { kind: 'vhost-user-fs', id: 'fs0', socket, tag: 'share' },
      ]),
    );
    cleanups.push(async () => {
      if (!vm.exited) await vm.kill();
    });
    await vm.waitForConsole(INIT_MARKER, { timeoutMs: 120_000 });
    const shell = await GuestShell.connect(path.join(runDir, 'test.sock'));
    cleanups.push(() => shell.close());

    const mount = await shell.run('mkdir -p /mnt/share && mount -t virtiofs share /mnt/share && cat /mnt/share/hello.txt');
    expect(mount).toEqual({ output: content, status: 0 });
    expect((await shell.run('echo written-in-the-guest > /mnt/share/from-guest.txt && sync')).status).toBe(0);
    expect(fs.readFileSync(path.join(share, 'from-guest.txt'), 'utf8')).toBe('written-in-the-guest\n');

    // The worker's root is the shared directory, in a mount namespace of its own.
    const [worker] = children(daemon.handle.pid);
    expect(worker).toBeDefined();
    expect(fs.readdirSync(`/proc/${worker}/root`).sort()).toEqual(fs.readdirSync(share).sort());
    expect(fs.readlinkSync(`/proc/${worker}/ns/mnt`)).not.toBe(fs.readlinkSync('/proc/self/ns/mnt'));

    const result = await vm.shutdown({ graceful: async () => shell.send('umount /mnt/share; poweroff -f') });
    expect(result.method).toBe('graceful');
    // virtiofsd ends with its VM.
    await daemon.waitForExit(AbortSignal.timeout(10_000));
    expect(daemon.running).toBe(false);
    await daemon.stop();
    expect(fs.existsSync(socket)).toBe(false);
  });

  it('refuses bad input and reports a daemon that cannot start', async () => {
    const runDir = makeRunDir();
    cleanups.push(() => fs.rmSync(runDir, { recursive: true, force: true }));
    const logFile = path.join(runDir, 'virtiofsd.log');
    await expect(Virtiofsd.start({ sharedDir: path.join(runDir, 'none'), socket: path.join(runDir, 's.sock'), logFile })).rejects.toMatchObject({
      constructor: InvalidArgumentError,
      field: 'sharedDir',
    });
    await expect(Virtiofsd.start({ sharedDir: '/tmp/a,b', socket: path.join(runDir, 's.sock'), logFile })).rejects.toMatchObject({ field: 'sharedDir' });
    fs.writeFileSync(path.join(runDir, 'file'), '');
    await expect(Virtiofsd.start({ sharedDir: runDir, socket: path.join(runDir, 'file'), logFile })).rejects.toMatchObject({ field: 'socket' });
    // A binary that exits at once is a DaemonError carrying its log, and leaves no socket.
    const error = await Virtiofsd.start({ sharedDir: runDir, socket: path.join(runDir, 's.sock'), logFile, binary: '/bin/false' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DaemonError);
    expect(fs.existsSync(path.join(runDir, 's.sock'))).toBe(false);
  });
});
