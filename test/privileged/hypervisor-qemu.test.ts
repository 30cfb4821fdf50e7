import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import type { GuestAssets } from '../../src/guest/index.js';
import { INIT_MARKER } from '../../src/guest/init.js';
import { VmExitedError, VmStartError } from '../../src/hypervisor/errors.js';
import type { VmExit, VmHandle } from '../../src/hypervisor/hypervisor.js';
import { isAlive, readProcStat } from '../../src/host/process.js';
import { QemuHypervisor } from '../../src/hypervisor/qemu/hypervisor.js';
import type { QemuVm } from '../../src/hypervisor/qemu/vm.js';
import { packageRoot } from '../../src/native.js';
import { testGuestAssets } from './guest-fixture.js';
import { GuestShell, killIfAlive, makeRunDir, vmConfig } from './hypervisor-fixture.js';

const hypervisor = new QemuHypervisor();
let assets: GuestAssets;
const vms: QemuVm[] = [];
const handles: VmHandle[] = [];
const shells: GuestShell[] = [];
const dirs: string[] = [];
const bootMs: Record<string, number[]> = {};

beforeAll(async () => {
  assets = (await testGuestAssets()).assets;
});
afterEach(async () => {
  for (const s of shells.splice(0)) s.close();
  for (const vm of vms.splice(0)) {
    if (!vm.exited) await vm.kill();
    vm.detach();
  }
  for (const h of handles.splice(0)) killIfAlive(h);
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});
afterAll(() => {
  for (const [machine, samples] of Object.entries(bootMs)) {
    console.info(`spawn -> "${INIT_MARKER}" on ${machine}: ${samples.map((ms) => ms.toFixed(0)).join(', ')} ms`);
  }
});

/** Starts a VM with the test shell port; resolves once the marker is on the console. */
async function boot(machine: 'q35' | 'microvm'): Promise<{ vm: QemuVm; shell: GuestShell; runDir: string }> {
  const runDir = makeRunDir();
  dirs.push(runDir);
  const start = performance.now();
  const vm = await hypervisor.start(vmConfig(assets, runDir, machine));
  vms.push(vm);
  await vm.waitForConsole(INIT_MARKER, { timeoutMs: 120_000 });
  (bootMs[machine] ??= []).push(performance.now() - start);
  const shell = await GuestShell.connect(path.join(runDir, 'test.sock'));
  shells.push(shell);
  return { vm, shell, runDir };
}

describe('QEMU VMs under the host accelerator', () => {
  it('q35: boots to the init marker; seccomp on; pause/resume; a second process-style attach; graceful shutdown', async () => {
    const { vm, shell, runDir } = await boot('q35');
    expect((await shell.run('uname -r')).output.trim()).toBe(assets.manifest?.kernelRelease);
    // The agent contract: mounts and lo are up when the agent starts.
    const mounts = (await shell.run('cat /proc/mounts')).output;
    for (const m of [' /proc proc', ' /sys sysfs', ' /dev devtmpfs', ' /dev/pts devpts', ' /dev/shm tmpfs', ' /run tmpfs', ' /tmp tmpfs', ' /sys/fs/cgroup cgroup2']) {
      expect(mounts).toContain(m);
    }
    expect((await shell.run('cat /sys/class/net/lo/operstate')).output.trim()).toMatch(/unknown|up/u);
    expect(fs.readFileSync(`/proc/${vm.handle.pid}/status`, 'utf8')).toMatch(/^Seccomp:\s+2$/mu);
    // Detached: its own session, not our process group.
    expect(fs.readFileSync(`/proc/${vm.handle.pid}/stat`, 'utf8').split(') ')[1]?.split(' ')[3]).toBe(String(vm.handle.pid));

    const events: string[] = [];
    vm.on('paused', () => events.push('paused'));
    vm.on('resumed', () => events.push('resumed'));
    await vm.pause();
    expect(await vm.status()).toBe('paused');
    await vm.resume();
    expect(await vm.status()).toBe('running');
    await new Promise((r) => setTimeout(r, 100));
    expect(events).toEqual(['paused', 'resumed']);

    // Another holder of the handle gets a free monitor while the first one is held.
    const other = await hypervisor.attach(JSON.parse(JSON.stringify(vm.handle)) as VmHandle);
    vms.push(other);
    expect(await other.status()).toBe('running');

    const exits: VmExit[] = [];
    other.on('exit', (e) => exits.push(e));
    const result = await vm.shutdown({ graceful: async () => shell.send('poweroff -f'), gracefulTimeoutMs: 30_000 });
    expect(result).toEqual({ method: 'graceful', exit: { reason: 'shutdown', detail: 'guest-shutdown' } });
    await other.waitForExit();
    expect(exits).toEqual([{ reason: 'shutdown', detail: 'guest-shutdown' }]);
    expect(isAlive(vm.handle)).toBe(false);
    await expect(vm.status()).rejects.toBeInstanceOf(VmExitedError);
    // QEMU's sockets are gone; the console log stays.
    expect(fs.readdirSync(runDir).sort()).toEqual(['console.log']);
  });

  it('microvm: boots to the init marker; a guest that ignores the power button is quit', async () => {
    const { vm, shell } = await boot('microvm');
    expect((await shell.run('cat /proc/cmdline')).output).toMatch(/tsc_early_khz=\d+/u);
    expect((await shell.run('ls /sys/bus/virtio/devices | wc -l')).output.trim()).not.toBe('0');
    const result = await vm.shutdown({ gracefulTimeoutMs: 1500 });
    expect(result).toEqual({ method: 'quit', exit: { reason: 'shutdown', detail: 'host-qmp-quit' } });
    expect(isAlive(vm.handle)).toBe(false);
  });

  it('falls back to SIGKILL when QEMU does not answer (SIGSTOPped)', async () => {
    const { vm } = await boot('microvm');
    process.kill(vm.handle.pid, 'SIGSTOP');
    const result = await vm.shutdown({ gracefulTimeoutMs: 500 });
    expect(result.method).toBe('kill');
    expect(result.exit.reason).toBe('shutdown');
    expect(isAlive(vm.handle)).toBe(false);
  });

  it('kill -9 from outside: the creator and an attached process both see an unexpected exit', async () => {
    const { vm } = await boot('q35');
    const attached = await hypervisor.attach(vm.handle);
    vms.push(attached);
    const seen = Promise.all([vm.waitForExit(), attached.waitForExit()]);
    const events: VmExit[] = [];
    vm.on('exit', (e) => events.push(e));
    process.kill(vm.handle.pid, 'SIGKILL');
    const [a, b] = await seen;
    expect(a).toEqual({ reason: 'unexpected', detail: 'SIGKILL' });
    expect(b.reason).toBe('unexpected');
    expect(events).toEqual([a]);
    await expect(attached.pause()).rejects.toBeInstanceOf(VmExitedError);
    await expect(hypervisor.attach(vm.handle)).rejects.toBeInstanceOf(VmExitedError);
  });

  it('QEMU outlives the Node process that started it, and is attached to from here', async () => {
    const runDir = makeRunDir();
    dirs.push(runDir);
    const config = vmConfig(assets, runDir, 'microvm', {}, []);
    const script = path.join(runDir, 'start.mts');
    fs.writeFileSync(
      script,
      `import { QemuHypervisor } from ${JSON.stringify(path.join(packageRoot, 'src/hypervisor/qemu/hypervisor.ts'))};
const vm = await new QemuHypervisor().start(${JSON.stringify(config)});
process.stdout.write(JSON.stringify(vm.handle));
vm.detach();
`,
    );
    const child = spawn(process.execPath, ['--import', 'tsx', script], { cwd: packageRoot, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
    expect(code).toBe(0);
    const handle = JSON.parse(out) as VmHandle;
    handles.push(handle);
    expect(readProcStat(child.pid ?? 0)).toBeUndefined();
    expect(isAlive(handle)).toBe(true);
    const vm = await hypervisor.attach(handle);
    vms.push(vm);
    await vm.waitForConsole(INIT_MARKER, { timeoutMs: 120_000 });
    expect(await vm.status()).toBe('running');
    const shell = await GuestShell.connect(path.join(runDir, 'test.sock'));
    shells.push(shell);
    expect((await shell.run('echo hello from $(hostname)')).status).toBe(0);
    const result = await vm.shutdown({ graceful: async () => shell.send('poweroff -f') });
    expect(result.method).toBe('graceful');
  });

  it('QEMU accepts a virtio-9p share (the cloud kernel has no 9p to mount it)', async () => {
    const runDir = makeRunDir();
    dirs.push(runDir);
    const vm = await hypervisor.start(
      vmConfig(assets, runDir, 'q35', {}, [{ kind: 'virtio-9p', id: 'p9', path: runDir, tag: 'vol1', readOnly: true }]),
    );
    vms.push(vm);
    expect(await vm.qmp?.execute('qom-get', { path: '/machine/peripheral/p9', property: 'type' })).toBe('virtio-9p-pci');
    await vm.kill();
  });

  it('rejects bad input before spawning, and reports a QEMU that fails to start with its log', async () => {
    const runDir = makeRunDir();
    dirs.push(runDir);
    await expect(hypervisor.start({ ...vmConfig(assets, runDir, 'q35'), kernel: '/nonexistent/vmlinux' })).rejects.toMatchObject({
      constructor: InvalidArgumentError,
      field: 'kernel',
    });
    await expect(hypervisor.start({ ...vmConfig(assets, runDir, 'q35'), id: '../x' })).rejects.toBeInstanceOf(InvalidArgumentError);
    // A device QEMU itself refuses: no such host PCI device.
    const bad = vmConfig(assets, runDir, 'q35', {}, [{ kind: 'vfio-pci', id: 'vf0', host: '0000:ff:1f.7' }]);
    const error = await hypervisor.start(bad).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(VmStartError);
    expect((error as VmStartError).logTail).toMatch(/vfio/u);
    expect(fs.readdirSync(runDir).sort()).toEqual(['console.log']);
  });
});
