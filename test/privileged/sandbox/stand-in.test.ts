/**
 * The stand-in hypervisor (test/privileged/stand-in-hypervisor.ts) through the public API: a
 * sandbox whose "VM" is the real agent on the host boots in well under a second, runs containers
 * from the builtin rootfs and from a bundle through the share (the host's binds, the agent's
 * --share), stops, boots again, is attached and paused from a second Node process
 * (test/privileged/stand-in-attach.ts), dies from outside with its containers, and leaves nothing
 * behind. Then the VirtualMachine mapping itself (several --listen ports, the share's bind,
 * pause, each shutdown step, kill) and what the stand-in refuses.
 */
import { execFile } from 'node:child_process';
import fsSync from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AgentClient } from '../../../src/agent/client.js';
import { InvalidArgumentError, InvalidStateError, TimeoutError } from '../../../src/errors.js';
import { VmExitedError } from '../../../src/hypervisor/errors.js';
import type { VmConfig, VmDevice, VmExit } from '../../../src/hypervisor/hypervisor.js';
import { isAlive, readProcStat } from '../../../src/host/process.js';
import { Sandbox, type StopInfo } from '../../../src/sandbox/sandbox.js';
import { haveAgent, haveBusybox, isRoot } from '../agent-host.js';
import { StandInHypervisor, StandInNoHotplugError, cleanupStandIn, standInFiles, standInSandboxConfig, type StandInVm } from '../stand-in-hypervisor.js';
import { collect, expectNothingLeft, forceCleanup, makeStateDir, processesMentioning, runScript, runcSpecBundle } from './fixture.js';

const exec = promisify(execFile);

const skipReason = !isRoot
  ? 'needs root (mounts, namespaces, cgroups)'
  : !haveAgent
    ? 'needs the agent (build/Release/vmpod-agent, or $VMPOD_AGENT)'
    : !haveBusybox
      ? 'needs /bin/busybox'
      : undefined;

/** Pids of the processes of a cgroup (empty when it is gone). */
async function cgroupProcs(dir: string | undefined): Promise<number[]> {
  if (!dir) return [];
  const text = await fs.readFile(path.join(dir, 'cgroup.procs'), 'utf8').catch(() => '');
  return text.split('\n').filter(Boolean).map(Number);
}

describe.skipIf(skipReason)(`the stand-in hypervisor${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  let scratch: string;

  beforeEach(async () => {
    stateDir = await makeStateDir();
    scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'vt-stand-in-test-'));
  });

  afterEach(async () => {
    try {
      for (const info of await Sandbox.list({ stateDir })) {
        await (await Sandbox.attach(info.id, { stateDir, hypervisor: new StandInHypervisor() })).delete({ force: true });
      }
      await expectNothingLeft(stateDir);
    } finally {
      await forceCleanup(stateDir);
      await forceCleanup(scratch); // the VM-level test's agents and mounts
    }
  });

  afterAll(async () => {
    await cleanupStandIn();
  });

  it('boots in well under a second, runs builtin and bundle containers, stops, boots again, deletes', async () => {
    const sandbox = await Sandbox.create({ stateDir, id: 'standin', ...standInSandboxConfig() });
    let t = performance.now();
    await sandbox.start();
    const firstStart = performance.now() - t;
    expect(sandbox.state).toBe('running');
    const pid = sandbox.pid!;
    // The "VM" is the agent itself (unshare exec'd it), in a mount namespace of its own.
    expect(path.basename((await fs.readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0')[0]!)).toBe('vmpod-agent');
    expect(await fs.readlink(`/proc/${pid}/ns/mnt`)).not.toBe(await fs.readlink('/proc/self/ns/mnt'));
    const handle = (await sandbox.record()).boot!.vm!;
    expect(handle).toMatchObject({ hypervisor: 'stand-in', pid, controlSockets: [] });

    // Builtin rootfs: an overlay of the stand-in's busybox.
    expect(await runScript(sandbox, {}, 'echo hello from $(hostname)')).toEqual({ out: expect.stringMatching(/^hello from /u), err: '', code: 0 });

    // A bundle: its rootfs is bound into the share by the host, and reaches the agent through
    // its --share bind of the share (the host's bind propagates into the agent's namespace).
    const bundle = await runcSpecBundle(path.join(scratch, 'bundle'), (spec) => {
      spec.process.terminal = false;
    });
    await fs.writeFile(path.join(bundle, 'rootfs', 'etc', 'marker'), 'from the host\n');
    const fromBundle = await sandbox.createContainer({ bundle, process: { args: ['cat', '/etc/marker'] } });
    const out = collect(fromBundle.stdout);
    // The agent sees the share as a guest would, at STATE/shared, with the bundle's bind inside ...
    const agentMounts = await fs.readFile(`/proc/${pid}/mountinfo`, 'utf8');
    const guestShared = path.join((await sandbox.record()).boot!.dir, 'agent', 'shared');
    expect(agentMounts).toContain(` ${guestShared} `);
    expect(agentMounts).toMatch(new RegExp(` ${guestShared.replaceAll('.', '\\.')}/rootfs/[^ ]+ `, 'u'));
    // ... and none of the agent's mounts shows on the host.
    expect(await fs.readFile('/proc/self/mountinfo', 'utf8')).not.toContain(guestShared);
    await fromBundle.start();
    expect(await fromBundle.wait()).toMatchObject({ exitCode: 0 });
    expect((await out).toString()).toBe('from the host\n');
    await fromBundle.delete();

    const stopped: StopInfo[] = [];
    sandbox.on('stopped', (info) => stopped.push(info));
    await sandbox.stop();
    expect(sandbox.state).toBe('stopped');
    expect(stopped).toEqual([{ reason: 'requested', detail: 'stop' }]);
    expect(isAlive(handle)).toBe(false);
    expect((await sandbox.record()).boot).toBeUndefined();

    t = performance.now();
    await sandbox.start();
    const secondStart = performance.now() - t;
    expect(sandbox.pid).not.toBe(pid);
    expect(await runScript(sandbox, { bundle }, 'cat /etc/marker')).toEqual({ out: 'from the host\n', err: '', code: 0 });
    // The graceful step skipped: the stand-in's "quit" (SIGTERM to the agent) ends it.
    await sandbox.stop({ timeoutMs: 0 });
    expect(stopped.at(-1)).toEqual({ reason: 'requested', detail: expect.stringMatching(/^stop: the guest did not power off in time, the hypervisor was (told to quit|killed)$/u) });
    await sandbox.delete();
    expect(sandbox.state).toBe('deleted');
    console.log(`stand-in boots: ${firstStart.toFixed(0)} ms, then ${secondStart.toFixed(0)} ms`);
    expect(firstStart).toBeLessThan(1000);
    expect(secondStart).toBeLessThan(1000);
  });

  it('is attached from a second Node process, which runs containers and pauses and resumes the VM', async () => {
    const sandbox = await Sandbox.create({ stateDir, id: 'shared', ...standInSandboxConfig() });
    await sandbox.start();
    const script = path.resolve('test/privileged/stand-in-attach.ts');
    const { stdout } = await exec(process.execPath, ['--import', 'tsx', script, stateDir, 'shared'], { timeout: 60_000 });
    const result = JSON.parse(stdout.trim().split('\n').pop()!);
    expect(result).toEqual({ pid: expect.any(Number), state: 'running', first: `from process ${result.pid}\n`, paused: 'paused', resumed: 'running', second: 'again\n' });
    // This process's handle on the sandbox still works, and so does its own pause (a frozen agent answers nothing).
    expect(await runScript(sandbox, {}, 'echo still here')).toMatchObject({ out: 'still here\n', code: 0 });
    await sandbox.pause();
    const c = sandbox.containers({ signal: AbortSignal.timeout(500) });
    await expect(c).rejects.toThrow(/aborted/);
    await sandbox.resume();
    expect(await sandbox.containers()).toEqual([]);
    await sandbox.delete({ force: true });
  });

  it('records an agent killed from outside as an unexpected stop, and its containers die with it', async () => {
    const sandbox = await Sandbox.create({ stateDir, id: 'victim', ...standInSandboxConfig() });
    await sandbox.start();
    const c = await sandbox.createContainer({ process: { args: ['sleep', '300'] } });
    await c.start();
    const sleeper = (await sandbox.containers())[0]!.pid; // the agent shares the host's pid namespace
    const sleeperId = { pid: sleeper, startTime: readProcStat(sleeper)!.startTime };
    expect(isAlive(sleeperId)).toBe(true);
    const vm = (await new StandInHypervisor().attach((await sandbox.record()).boot!.vm!)) as StandInVm;
    const cgroup = vm.cgroup;
    vm.detach();
    if (cgroup) expect(await cgroupProcs(cgroup)).toEqual(expect.arrayContaining([sandbox.pid!, sleeper]));

    const stopped = new Promise<StopInfo>((resolve) => sandbox.once('stopped', resolve));
    process.kill(sandbox.pid!, 'SIGKILL');
    expect(await stopped).toEqual({ reason: 'unexpected', detail: 'SIGKILL' });
    expect(sandbox.state).toBe('stopped');
    // The sandbox is stopped: the container's wait is refused as such, not with a broken socket.
    await expect(c.wait()).rejects.toThrow(InvalidStateError);
    await expect(c.wait()).rejects.toMatchObject({ code: 'ERR_VMPOD_INVALID_STATE', from: 'stopped' });
    if (cgroup) {
      // As a VM's processes go with it: the container is killed with the agent's cgroup.
      for (let i = 0; i < 100 && isAlive(sleeperId); i++) await new Promise((r) => setTimeout(r, 20));
      expect(isAlive(sleeperId)).toBe(false);
    } else {
      process.kill(sleeper, 'SIGKILL');
    }
    await sandbox.delete();
  });

  it('stands in at the VM level: several agent ports, the share as a bind, pause, each shutdown step, kill', async () => {
    const shared = path.join(scratch, 'shared');
    const runDir = path.join(scratch, 'run');
    await fs.mkdir(path.join(shared, 'sub'), { recursive: true });
    await fs.mkdir(runDir);
    await fs.writeFile(path.join(shared, 'hello.txt'), 'hello\n');
    // What the sandbox does to its share: a shared mount, so that later mounts inside it propagate.
    await exec('mount', ['--bind', shared, shared]);
    await exec('mount', ['--make-shared', shared]);
    const { kernel, initramfs } = standInFiles();
    const sockets = [0, 1, 2].map((i) => path.join(runDir, `agent-${i}.sock`));
    const config: VmConfig = {
      id: 'vmlevel',
      cpus: 1,
      memory: { sizeMiB: 64 },
      kernel,
      initramfs,
      consoleLog: path.join(scratch, 'console.log'), // the share is the folder of the console log's `shared`
      runDir,
      devices: [
        { kind: 'virtio-serial', id: 'agent', ports: sockets.map((socket, i) => ({ name: `vmpod.agent.${i}`, socket })) },
        { kind: 'vhost-user-fs', id: 'sharedfs', socket: path.join(runDir, 'virtiofsd.sock'), tag: 'vmpod' },
      ],
    };
    const hypervisor = new StandInHypervisor();
    const clients: AgentClient[] = [];
    try {
      for (const device of [
        { kind: 'virtio-serial', id: 'streams', ports: [] },
        { kind: 'virtio-net', id: 'net0', tap: { ifname: 'vt-none' } },
        { kind: 'vhost-user-fs', id: 'other', socket: '/x.sock', tag: 'other' },
        { kind: 'vfio-pci', id: 'dev0', host: '0000:00:01.0' },
      ] as VmDevice[]) {
        expect(() => hypervisor.commandLine({ ...config, devices: [...config.devices!, device] })).toThrow(InvalidArgumentError);
      }
      let vm = await hypervisor.start(config);
      expect(await vm.status()).toBe('running');
      // Every port listens: a process per port, as with virtio-serial.
      for (const socket of sockets) clients.push(await AgentClient.connectUnix(socket, { timeoutMs: 5000 }));
      const agent = clients[1]!;
      const target = `${agent.info.stateDir}/shared`;
      await agent.mount({ type: 'virtiofs', source: 'vmpod', target, readOnly: true });
      // Seen through the agent's mount namespace: the share, read-only, and what the host mounts in it later.
      const inAgent = (p: string): string => `/proc/${vm.handle.pid}/root${p}`;
      expect(await fs.readFile(inAgent(`${target}/hello.txt`), 'utf8')).toBe('hello\n');
      await expect(fs.writeFile(inAgent(`${target}/new.txt`), 'x')).rejects.toMatchObject({ code: 'EROFS' });
      await exec('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'vt-stand-in', path.join(shared, 'sub')]);
      expect(await fs.readFile(`/proc/${vm.handle.pid}/mountinfo`, 'utf8')).toContain(` ${target}/sub `);
      expect(await fs.readFile('/proc/self/mountinfo', 'utf8')).not.toContain(` ${target}`);
      // The share's bind goes with its submounts, as a virtio-fs mount does.
      await agent.unmount(target);
      expect(await fs.readFile(`/proc/${vm.handle.pid}/mountinfo`, 'utf8')).not.toContain(` ${target}`);

      const events: string[] = [];
      vm.on('paused', () => events.push('paused'));
      vm.on('resumed', () => events.push('resumed'));
      await vm.pause();
      expect(await vm.status()).toBe('paused');
      await expect(agent.ping({ timeoutMs: 300 })).rejects.toBeInstanceOf(TimeoutError); // a paused guest does not answer
      await vm.resume();
      expect(await vm.status()).toBe('running');
      await agent.ping();
      expect(events).toEqual(['paused', 'resumed']);

      // 1. The caller's graceful step fails: SIGTERM ("quit") ends it.
      const exits: VmExit[] = [];
      vm.on('exit', (exit) => exits.push(exit));
      expect(await vm.shutdown({ graceful: () => Promise.reject(new Error('no')), gracefulTimeoutMs: 0 })).toEqual({ method: 'quit', exit: { reason: 'shutdown', detail: 'host-sigterm' } });
      expect(exits).toEqual([{ reason: 'shutdown', detail: 'host-sigterm' }]);
      expect(sockets.map((socket) => fsSync.existsSync(socket))).toEqual([false, false, false]);
      await expect(hypervisor.attach(vm.handle)).rejects.toBeInstanceOf(VmExitedError);
      await expect(vm.pause()).rejects.toBeInstanceOf(VmExitedError);
      for (const client of clients.splice(0)) client.close();

      // 2. No graceful step given: SIGTERM is the power button, and the agent powers off.
      vm = await hypervisor.start(config);
      expect(await vm.shutdown()).toEqual({ method: 'graceful', exit: { reason: 'shutdown', detail: 'guest-shutdown' } });

      // 3. A paused agent whose graceful step hangs: thawed and told to quit; seen from an attached VM too.
      vm = await hypervisor.start(config);
      const attached = await hypervisor.attach(vm.handle);
      const seen = attached.waitForExit();
      await vm.pause();
      expect(await vm.shutdown({ graceful: () => new Promise(() => undefined), gracefulTimeoutMs: 100 })).toMatchObject({ method: 'quit' });
      expect(await seen).toEqual({ reason: 'shutdown', detail: 'guest-shutdown' }); // it could see the agent remove its sockets

      // 4. kill(): SIGKILL to its cgroup; an attached VM sees it gone without its own shutdown.
      vm = await hypervisor.start(config);
      const watcher = await hypervisor.attach(vm.handle);
      const killed = watcher.waitForExit();
      expect(await vm.kill()).toEqual({ reason: 'shutdown', detail: 'SIGKILL' });
      expect(await killed).toEqual({ reason: 'unexpected', detail: 'the agent process is gone' });
      if (vm.cgroup) expect(fsSync.existsSync(vm.cgroup)).toBe(false);
    } finally {
      for (const client of clients) client.close();
      await exec('umount', ['-l', path.join(shared, 'sub')]).catch(() => undefined);
      await exec('umount', ['-l', shared]).catch(() => undefined);
    }
  });

  it('refuses what a host cannot stand in for: stream ports, hotplug', async () => {
    const { guest } = standInSandboxConfig();
    const streams = await Sandbox.create({ stateDir, id: 'streams', hypervisor: new StandInHypervisor(), guest });
    const error = await streams.start().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect((error as Error).message).toMatch(/virtio-serial device "streams".*streamPorts: 0/u);
    expect(streams.state).toBe('stopped');
    expect(await processesMentioning(stateDir)).toEqual([]);
    await streams.delete();

    const sandbox = await Sandbox.create({ stateDir, id: 'noplug', ...standInSandboxConfig() });
    await sandbox.start();
    const vm = await new StandInHypervisor().attach((await sandbox.record()).boot!.vm!);
    await expect(vm.hotplug({ kind: 'virtio-blk', id: 'disk', path: '/dev/null' })).rejects.toBeInstanceOf(StandInNoHotplugError);
    await expect(vm.unplug('disk')).rejects.toThrow(/stand-in hypervisor has no hotplug/u);
    expect(await vm.status()).toBe('running');
    vm.detach();
    await sandbox.delete({ force: true });
  });
});
