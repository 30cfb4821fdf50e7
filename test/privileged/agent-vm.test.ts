// The agent as PID 1 of a real guest (TCG here), over virtio-serial: it boots the guest assets
// built with this agent, then drives it with AgentClient on two ports at once. This covers
// what the host tests cannot: PID 1 duties, the vmpod.agent.* ports (reconnects included),
// pivot_root from an initramfs, guest cgroup2 (limits, stats, OOM kill) and power-off.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { AgentClient } from '../../src/agent/client.js';
import type { OciSpec } from '../../src/agent/messages.js';
import { buildGuestAssets, type GuestAssets } from '../../src/guest/index.js';
import { kvmUsable } from '../../src/hypervisor/host.js';
import { guestCoverageArgs } from '../../src/hypervisor/qemu/coverage.js';
import { AGENT_BINARY, BUSYBOX, collect, haveAgent, isRoot, uniqueId } from './agent-host.js';

const QEMU = '/usr/bin/qemu-system-x86_64';
const ready = isRoot && haveAgent && fs.existsSync(QEMU) && fs.existsSync(BUSYBOX);
const reason = !isRoot ? 'needs root' : !haveAgent ? `no agent binary at ${AGENT_BINARY}` : 'qemu-system-x86 or busybox-static missing';

/** A spec for the guest's builtin rootfs: its own /proc, /dev, /sys and cgroup namespace. */
function guestSpec(args: string[]): OciSpec {
  return {
    ociVersion: '1.0.2',
    process: { args, env: ['PATH=/usr/sbin:/usr/bin:/sbin:/bin'], cwd: '/' },
    hostname: 'guest-container',
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc' },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'mode=755'] },
      { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['newinstance', 'ptmxmode=0666'] },
      { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['ro', 'nosuid', 'nodev', 'noexec'] },
      { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['ro'] },
    ],
    linux: { namespaces: [{ type: 'pid' }, { type: 'mount' }, { type: 'ipc' }, { type: 'uts' }, { type: 'cgroup' }] },
  };
}

describe.skipIf(!ready)(`vmpod-agent as PID 1 of a VM (${ready ? 'KVM when usable, else TCG' : reason})`, () => {
  let assets: GuestAssets;
  /** The VM the tests share; a test that powers it off leaves the next one to boot another. */
  interface Vm {
    dir: string;
    qemu: ChildProcess;
    exited: Promise<number | null>;
    sockets: string[];
    clients: AgentClient[];
    stderr: string;
  }
  let vm: Vm | undefined;
  /** The host end of port 0 that the tests share (one host at a time per port). */
  let port0: AgentClient | undefined;
  const consoleLog = () => (vm ? fs.readFileSync(path.join(vm.dir, 'console.log'), 'utf8') : '');

  async function connect(port: number): Promise<AgentClient> {
    const booted = vm!;
    // QEMU binds the socket a moment before it listens on it.
    for (let attempt = 0; ; attempt++) {
      try {
        const c = await AgentClient.connectUnix(booted.sockets[port]!, { timeoutMs: 120_000, clientName: `agent-vm-test-${port}` });
        booted.clients.push(c);
        return c;
      } catch (error) {
        if (attempt >= 100 || !String(error).includes('ECONNREFUSED')) {
          throw new Error(`${String(error)}; qemu: ${booted.qemu.exitCode ?? 'running'} ${booted.stderr}`, { cause: error });
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  /** A client on port 0 of the running VM: the shared one, connected on first use. */
  async function shared(): Promise<AgentClient> {
    port0 ??= await connect(0);
    return port0;
  }

  async function run(client: AgentClient, id: string, spec: OciSpec) {
    await client.createContainer({ id, config: spec, rootfs: 'builtin' });
    const { stdout, stderr } = await client.openStdio(id, { stdout: true, stderr: true });
    const out = collect(stdout);
    const err = collect(stderr);
    await client.startContainer(id);
    const status = await client.wait(id);
    const result = { status, stdout: await out, stderr: (await err).toString() };
    await client.deleteContainer(id);
    return result;
  }

  async function boot(): Promise<void> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), `vt${randomBytes(2).toString('hex')}-agentvm-`));
    const args = ['-M', 'q35', '-cpu', 'max', '-smp', '1', '-m', '512M', '-nodefaults', '-no-user-config', '-nographic'];
    // /dev/kvm alone is no proof that KVM works (it does not here): ask QEMU.
    if (await kvmUsable(QEMU)) args.push('-accel', 'kvm');
    args.push('-serial', `file:${path.join(dir, 'console.log')}`, '-no-reboot');
    args.push('-kernel', assets.kernel, '-initrd', assets.initramfs, '-append', 'console=ttyS0 quiet panic=-1');
    args.push('-device', 'virtio-serial-pci,id=vs0');
    const sockets: string[] = [];
    for (let i = 0; i < 2; i++) {
      const socket = path.join(dir, `agent${i}.sock`);
      sockets.push(socket);
      args.push('-chardev', `socket,id=ch${i},path=${socket},server=on,wait=off`);
      args.push('-device', `virtserialport,bus=vs0.0,chardev=ch${i},name=vmpod.agent.${i}`);
    }
    args.push(...guestCoverageArgs('q35')); // coverage runs only (VMPOD_GUEST_COVERAGE_DIR)
    const qemu = spawn(QEMU, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    const booted: Vm = { dir, qemu, exited: new Promise((resolve) => qemu.once('exit', (code) => resolve(code))), sockets, clients: [], stderr: '' };
    qemu.stderr!.setEncoding('utf8').on('data', (s: string) => (booted.stderr += s));
    vm = booted;
    port0 = undefined;
    for (let i = 0; i < 500 && !sockets.every((s) => fs.existsSync(s)); i++) {
      if (qemu.exitCode !== null) throw new Error(`qemu exited: ${booted.stderr}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Closes the VM's clients, ends QEMU if it still runs, removes its folder. */
  async function discard(): Promise<void> {
    const gone = vm;
    vm = undefined;
    port0 = undefined;
    if (!gone) return;
    for (const c of gone.clients) c.close();
    if (gone.qemu.exitCode === null && gone.qemu.signalCode === null) gone.qemu.kill('SIGKILL');
    await gone.exited;
    fs.rmSync(gone.dir, { recursive: true, force: true });
  }

  beforeAll(async () => {
    const built = await buildGuestAssets({ cacheDir: '/var/cache/vmpod/test-agent-vm', agent: AGENT_BINARY, updateAptLists: true });
    assets = built.assets;
  });

  // Every test finds a running VM, whichever test ran before it (the power-off test ends its own).
  beforeEach(async () => {
    if (vm && (vm.qemu.exitCode !== null || vm.qemu.signalCode !== null)) await discard();
    if (!vm) await boot();
  });

  afterAll(discard);

  it('answers the handshake as PID 1 with guest cgroup2 controllers', async () => {
    const client = await shared();
    expect(client.info).toMatchObject({ pid: 1, pid1: true, cgroups: true, stateDir: '/run/vmpod' });
    expect(client.info.controllers).toEqual(expect.arrayContaining(['memory', 'pids', 'cpu']));
    const time = await client.setTime(new Date());
    expect(time.applied).toBe(true);
  });

  it('runs a builtin-rootfs container on the guest kernel, exit 0 and non-zero', async () => {
    const client = await shared();
    const ok = await run(client, uniqueId(), guestSpec(['sh', '-c', 'uname -r; hostname; cat /proc/self/cgroup; tty || true']));
    expect(ok.status).toEqual({ exitCode: 0, signal: 0, oomKilled: false });
    const [release, hostname, cgroup] = ok.stdout.toString().split('\n');
    expect(release).toBe(assets.manifest!.kernelRelease);
    expect(release).not.toBe(os.release());
    expect(hostname).toBe('guest-container');
    expect(cgroup).toBe('0::/'); // its own cgroup namespace
    const failed = await run(client, uniqueId(), guestSpec(['sh', '-c', 'exit 9']));
    expect(failed.status.exitCode).toBe(9);
  });

  it('applies memory and pids limits, reports stats, and reports an OOM kill', async () => {
    const client = await shared();
    const id = uniqueId('oom');
    const spec = guestSpec(['sh', '-c', 'sleep 2; x=a; while true; do x="$x$x"; done']);
    spec.linux!.resources = {
      memory: { limit: 32 * 1024 * 1024, swap: 32 * 1024 * 1024 },
      pids: { limit: 20 },
      cpu: { quota: 50_000, period: 100_000, shares: 512 },
    };
    await client.createContainer({ id, config: spec, rootfs: 'builtin', stdio: { stdout: false, stderr: false } });
    await client.startContainer(id);
    const stats = await client.stats(id);
    expect(stats.memory.maxBytes).toBe(32 * 1024 * 1024);
    expect(stats.pids.max).toBe(20);
    expect(stats.pids.current).toBeGreaterThanOrEqual(1);
    // The limits as the container sees them, through its cgroup namespace.
    await client.exec({ containerId: id, execId: 'look', process: { args: ['sh', '-c', 'cd /sys/fs/cgroup && cat memory.max pids.max cpu.max cpu.weight'], env: ['PATH=/bin'] } });
    const look = await client.openStdio(id, { execId: 'look', stdout: true });
    expect((await collect(look.stdout)).toString()).toBe(`${32 * 1024 * 1024}\n20\n50000 100000\n20\n`);
    expect(await client.wait(id)).toEqual({ exitCode: 137, signal: 9, oomKilled: true });
    await client.deleteContainer(id);
  });

  it('streams a file written with sendfile through virtio-serial, complete and in order', async () => {
    const client = await shared();
    // busybox cat uses sendfile(): page-cache pages in the pipe (see docs/agent-protocol.md).
    const r = await run(client, uniqueId(), guestSpec(['sh', '-c', 'for i in 1 2 3 4; do cat /bin/busybox; done']));
    expect(r.status.exitCode).toBe(0);
    const one = fs.readFileSync(BUSYBOX);
    expect(r.stdout.length).toBe(4 * one.length);
    const expected = createHash('sha256').update(Buffer.concat([one, one, one, one])).digest('hex');
    expect(createHash('sha256').update(r.stdout).digest('hex')).toBe(expected);
  });

  it('serves a second port at once, and a reconnecting host on the first', async () => {
    const first = await shared();
    const second = await connect(1);
    const id = uniqueId();
    await first.createContainer({ id, config: guestSpec(['sh', '-c', 'read line; exit 3']), rootfs: 'builtin', stdio: { stdin: true } });
    await first.startContainer(id);
    const waited = second.wait(id);
    first.close(); // the host end of port 0 goes away...
    const again = await connect(0); // ...and comes back
    expect((await again.listContainers()).find((c) => c.id === id)?.status).toBe('running');
    const { stdin } = await again.openStdio(id, { stdin: true });
    stdin!.end('go\n');
    expect(await waited).toEqual({ exitCode: 3, signal: 0, oomKilled: false });
    await second.deleteContainer(id);
    // Hosts coming and going quickly on the same port, each with a fresh handshake.
    let client = again;
    for (let i = 0; i < 10; i++) {
      client.close();
      client = await connect(0);
      await client.ping();
      expect(client.info.pid).toBe(1);
    }
    port0 = client; // the tests after this one go on with the last host on port 0
    second.close();
  });

  it('makes a read-only root and a read-only rbind read-only all the way down, pivoting from the initramfs', async () => {
    const client = await shared();
    const probe = (file: string) => `touch ${file} 2>/dev/null && echo "${file} writable" || echo "${file} read-only"`;
    // The guest's /sys has submounts (its /init mounts cgroup2 on /sys/fs/cgroup).
    const options = (point: string) => `grep " ${point} " /proc/mounts | cut -d" " -f4 | cut -d, -f1`;
    const spec = guestSpec(['sh', '-c', [probe('/x'), probe('/dev/x'), options('/sys-ro'), options('/sys-ro/fs/cgroup')].join('; ')]);
    spec.root = { path: 'rootfs', readonly: true };
    spec.mounts!.push({ destination: '/sys-ro', type: 'bind', source: '/sys', options: ['rbind', 'ro'] });
    const r = await run(client, uniqueId(), spec);
    expect(r.stdout.toString()).toBe('/x read-only\n/dev/x writable\nro\nro\n');
    expect(r.status.exitCode).toBe(0);
  });

  it('powers the guest off on Shutdown (QEMU exits)', async () => {
    const client = await shared();
    await client.shutdown();
    const code = await Promise.race([vm!.exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 60_000))]);
    expect(code, consoleLog()).toBe(0);
    expect(consoleLog()).toContain('powering off');
    await discard(); // a test after this one boots another VM
  });
});
