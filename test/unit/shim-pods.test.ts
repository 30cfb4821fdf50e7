/**
 * The shim's pods without a VM: the VM size from the pod annotations (and the refusals of bad
 * values), the pod a task belongs to, and the Pods class over a fake sandbox backend: one boot
 * per pod whatever the concurrency, app containers joining, release of the last task deleting
 * the VM, the VM's death told once, and the crash clean-up from the pod records.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { EventEmitter } from 'eventemitter3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError, InvalidStateError, NotFoundError } from '../../src/errors.js';
import { readProcStat } from '../../src/host/process.js';
import type { Sandbox, SandboxConfig } from '../../src/sandbox/sandbox.js';
import { silentLog } from '../../src/shim/log.js';
import { GrpcCode, TtrpcError } from '../../src/shim/ttrpc/status.js';
import {
  CRI_SANDBOX_CPU_PERIOD,
  CRI_SANDBOX_CPU_QUOTA,
  CRI_SANDBOX_MEMORY,
  POD_AGENT_PORTS,
  Pods,
  libraryContainerId,
  podOf,
  podRecordsDir,
  podSize,
  type PodBackend,
  type RuntimeSpec,
} from '../../src/shim/pods.js';

const MiB = 1024 * 1024;
const TYPE = 'io.kubernetes.cri.container-type';
const SANDBOX_ID = 'io.kubernetes.cri.sandbox-id';

describe('podSize', () => {
  it('defaults to 1 vCPU and 256 MiB without annotations', () => {
    expect(podSize({}, 8)).toEqual({ cpus: 1, memoryMiB: 256 });
  });

  it('guest RAM is the pod limit plus 128 MiB, at least 256 MiB', () => {
    expect(podSize({ [CRI_SANDBOX_MEMORY]: String(512 * MiB) }, 8).memoryMiB).toBe(640);
    expect(podSize({ [CRI_SANDBOX_MEMORY]: String(512 * MiB + 1) }, 8).memoryMiB).toBe(641);
    expect(podSize({ [CRI_SANDBOX_MEMORY]: String(64 * MiB) }, 8).memoryMiB).toBe(256);
    expect(podSize({ [CRI_SANDBOX_MEMORY]: '1' }, 8).memoryMiB).toBe(256);
    expect(podSize({ [CRI_SANDBOX_MEMORY]: String(128 * MiB) }, 8).memoryMiB).toBe(256);
    expect(podSize({ [CRI_SANDBOX_MEMORY]: String(129 * MiB) }, 8).memoryMiB).toBe(257);
  });

  it('vCPUs are ceil(quota / period), at least 1, at most the host CPUs', () => {
    expect(podSize({ [CRI_SANDBOX_CPU_QUOTA]: '150000', [CRI_SANDBOX_CPU_PERIOD]: '100000' }, 8).cpus).toBe(2);
    expect(podSize({ [CRI_SANDBOX_CPU_QUOTA]: '200000', [CRI_SANDBOX_CPU_PERIOD]: '100000' }, 8).cpus).toBe(2);
    expect(podSize({ [CRI_SANDBOX_CPU_QUOTA]: '200001', [CRI_SANDBOX_CPU_PERIOD]: '100000' }, 8).cpus).toBe(3);
    expect(podSize({ [CRI_SANDBOX_CPU_QUOTA]: '1000', [CRI_SANDBOX_CPU_PERIOD]: '100000' }, 8).cpus).toBe(1);
    expect(podSize({ [CRI_SANDBOX_CPU_QUOTA]: '800000', [CRI_SANDBOX_CPU_PERIOD]: '100000' }, 2).cpus).toBe(2);
    // A quota without a period: the kernel's 100 ms.
    expect(podSize({ [CRI_SANDBOX_CPU_QUOTA]: '300000' }, 8).cpus).toBe(3);
    expect(podSize({ [CRI_SANDBOX_CPU_QUOTA]: '300000', [CRI_SANDBOX_CPU_PERIOD]: '0' }, 8).cpus).toBe(3);
    expect(podSize({ [CRI_SANDBOX_CPU_QUOTA]: '50000', [CRI_SANDBOX_CPU_PERIOD]: '10000' }, 8).cpus).toBe(5);
  });

  it('no limit (0, -1, absent) falls back to the vmpod annotations, then the defaults', () => {
    const own = { 'io.vmpod.sandbox.cpus': '2', 'io.vmpod.sandbox.memory-mib': '384' };
    expect(podSize({ ...own, [CRI_SANDBOX_MEMORY]: '0', [CRI_SANDBOX_CPU_QUOTA]: '0', [CRI_SANDBOX_CPU_PERIOD]: '100000' }, 8)).toEqual({ cpus: 2, memoryMiB: 384 });
    expect(podSize({ ...own, [CRI_SANDBOX_CPU_QUOTA]: '-1' }, 8)).toEqual({ cpus: 2, memoryMiB: 384 });
    expect(podSize({ [CRI_SANDBOX_MEMORY]: '0', [CRI_SANDBOX_CPU_QUOTA]: '-1', [CRI_SANDBOX_CPU_PERIOD]: '100000' }, 8)).toEqual({ cpus: 1, memoryMiB: 256 });
    // The CRI limits win over vmpod's own annotations.
    expect(podSize({ ...own, [CRI_SANDBOX_MEMORY]: String(1024 * MiB), [CRI_SANDBOX_CPU_QUOTA]: '100000', [CRI_SANDBOX_CPU_PERIOD]: '100000' }, 8)).toEqual({ cpus: 1, memoryMiB: 1152 });
  });

  it.each([
    [CRI_SANDBOX_MEMORY, 'abc'],
    [CRI_SANDBOX_MEMORY, '1.5'],
    [CRI_SANDBOX_MEMORY, '1e9'],
    [CRI_SANDBOX_MEMORY, '-1'],
    [CRI_SANDBOX_MEMORY, ' 100'],
    [CRI_SANDBOX_MEMORY, '99999999999999999999'],
    [CRI_SANDBOX_MEMORY, String(2 ** 52)],
    [CRI_SANDBOX_CPU_QUOTA, 'lots'],
    [CRI_SANDBOX_CPU_QUOTA, '-2'],
    [CRI_SANDBOX_CPU_PERIOD, '-100000'],
    [CRI_SANDBOX_CPU_PERIOD, '0x10'],
    ['io.vmpod.sandbox.cpus', '0'],
    ['io.vmpod.sandbox.memory-mib', 'big'],
  ])('refuses %s=%j with an InvalidArgumentError naming it', (key, value) => {
    const call = () => podSize({ [key]: value, ...(key === CRI_SANDBOX_CPU_PERIOD ? { [CRI_SANDBOX_CPU_QUOTA]: '100000' } : {}) }, 8);
    expect(call).toThrow(InvalidArgumentError);
    expect(call).toThrow(key);
  });
});

describe('podOf', () => {
  const spec = (annotations?: Record<string, string>): RuntimeSpec => ({ ociVersion: '1.0.2', process: { args: ['sh'], cwd: '/' }, ...(annotations ? { annotations } : {}) }) as RuntimeSpec;

  it('the pod is CRI\'s sandbox id; the sandbox container boots it, app containers join it', () => {
    const pod = 'a'.repeat(64);
    expect(podOf(pod, spec({ [TYPE]: 'sandbox', [SANDBOX_ID]: pod }))).toEqual({ pod, sandboxId: pod, role: 'sandbox' });
    expect(podOf('b'.repeat(64), spec({ [TYPE]: 'container', [SANDBOX_ID]: pod }))).toEqual({ pod, sandboxId: pod, role: 'container' });
  });

  it('a container without CRI annotations is a pod of one', () => {
    expect(podOf('web', spec())).toEqual({ pod: 'web', sandboxId: 'web', role: undefined });
    expect(podOf('web', spec({ 'io.vmpod.sandbox': 'shared' }))).toEqual({ pod: 'shared', sandboxId: 'shared', role: undefined });
  });

  it('a name the library does not take as an id gets a digest; the same name the same one', () => {
    const long = `x${'y'.repeat(70)}`;
    const { sandboxId } = podOf(long, spec());
    expect(sandboxId).toMatch(/^s-[0-9a-f]{32}$/u);
    expect(podOf(long, spec()).sandboxId).toBe(sandboxId);
    expect(libraryContainerId(long)).toBe(sandboxId);
    expect(libraryContainerId('short-id')).toBe('short-id');
  });

  it('refuses an app container without its sandbox id, and annotations that are not strings', () => {
    expect(() => podOf('c', spec({ [TYPE]: 'container' }))).toThrow(InvalidArgumentError);
    expect(() => podOf('c', { ...spec(), annotations: { a: 1 } } as unknown as RuntimeSpec)).toThrow(InvalidArgumentError);
    expect(() => podOf('c', { ...spec(), annotations: ['x'] } as unknown as RuntimeSpec)).toThrow(InvalidArgumentError);
  });
});

// --- Pods over a fake backend ----------------------------------------------------------------------

class FakeContainer {
  deleted = 0;
  failDelete: Error | undefined;
  constructor(readonly id: string) {}
  async delete(): Promise<void> {
    if (this.failDelete) throw this.failDelete;
    this.deleted++;
  }
}

class FakeSandbox extends EventEmitter {
  state = 'running';
  deletes = 0;
  detached = 0;
  pid: number | undefined = 4242;
  readonly containers = new Map<string, FakeContainer>();
  readonly creates: unknown[] = [];
  failCreate: Error | undefined;
  constructor(readonly config: SandboxConfig) {
    super();
  }
  get id(): string {
    return this.config.id!;
  }
  async createContainer(options: { id: string }): Promise<FakeContainer> {
    this.creates.push(options);
    await new Promise((resolve) => setTimeout(resolve, 5));
    if (this.failCreate) throw this.failCreate;
    const c = new FakeContainer(options.id);
    this.containers.set(options.id, c);
    return c;
  }
  async container(id: string): Promise<FakeContainer> {
    const c = this.containers.get(id);
    if (!c) throw new NotFoundError('container', id);
    return c;
  }
  async delete(): Promise<void> {
    this.deletes++;
    this.state = 'deleted';
    // The library tells a stop it was asked for, as it does.
    this.emit('stopped', { reason: 'requested', detail: 'stop' });
  }
  detach(): void {
    this.detached++;
  }
}

class FakeBackend implements PodBackend {
  readonly booted: FakeSandbox[] = [];
  readonly removed: string[] = [];
  readonly recorded = new Map<string, FakeSandbox>();
  bootDelayMs = 30;
  failBoot: Error | undefined;
  async boot(config: SandboxConfig): Promise<Sandbox> {
    await new Promise((resolve) => setTimeout(resolve, this.bootDelayMs));
    if (this.failBoot) throw this.failBoot;
    const s = new FakeSandbox(config);
    this.booted.push(s);
    this.recorded.set(config.id!, s);
    return s as unknown as Sandbox;
  }
  async attach(id: string): Promise<Sandbox | undefined> {
    return this.recorded.get(id) as unknown as Sandbox | undefined;
  }
  async remove(id: string): Promise<void> {
    this.removed.push(id);
    this.recorded.delete(id);
  }
}

describe('Pods', () => {
  let stateDir: string;
  let backend: FakeBackend;
  let pods: Pods;
  const NS = 'k8s.io';
  const POD = 'p'.repeat(64);

  beforeEach(async () => {
    stateDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vt-shim-pods-'));
    backend = new FakeBackend();
    pods = new Pods({ stateDir, namespace: NS, log: silentLog, backend });
  });
  afterEach(async () => {
    await fs.rm(stateDir, { recursive: true, force: true });
  });

  const recordFile = (sandboxId = POD) => path.join(podRecordsDir(stateDir, NS), `${sandboxId}.json`);
  const record = async (sandboxId = POD) => JSON.parse(await fs.readFile(recordFile(sandboxId), 'utf8')) as { pod: string; containers: string[]; namespace: string };

  function request(id: string, annotations: Record<string, string>, extra: Partial<RuntimeSpec> = {}) {
    return { id, bundle: `/run/containerd/io.containerd.runtime.v2.task/${NS}/${id}`, spec: { ociVersion: '1.0.2', process: { args: ['/pause'], cwd: '/' }, annotations, ...extra } as RuntimeSpec, stdio: { stdin: false, terminal: false } };
  }
  const sandboxReq = (extra: Record<string, string> = {}, spec: Partial<RuntimeSpec> = {}) => request(POD, { [TYPE]: 'sandbox', [SANDBOX_ID]: POD, ...extra }, spec);
  const appReq = (id: string) => request(id, { [TYPE]: 'container', [SANDBOX_ID]: POD });

  it('the sandbox container boots the VM sized from its annotations, with the pod netns; its record names the task', async () => {
    const { pod, container } = await pods.createContainer(
      sandboxReq({ [CRI_SANDBOX_MEMORY]: String(256 * MiB), [CRI_SANDBOX_CPU_QUOTA]: '100000', [CRI_SANDBOX_CPU_PERIOD]: '100000' }, { hostname: 'web-0', linux: { namespaces: [{ type: 'network', path: '/var/run/netns/cni-1234' }, { type: 'pid' }] } }),
    );
    expect(backend.booted).toHaveLength(1);
    // The pod's hostname is the guest's: the app containers, which CRI gives none, have it too.
    expect(backend.booted[0]!.config).toEqual({ id: POD, stateDir, cpus: 1, memoryMiB: 384, agentPorts: POD_AGENT_PORTS, network: { netns: '/var/run/netns/cni-1234', hostname: 'web-0' } });
    expect(pod.name).toBe(POD);
    expect(pod.sandbox).toBe(backend.booted[0]);
    expect([...pod.containers]).toEqual([POD]);
    expect((container as unknown as FakeContainer).id).toBe(POD);
    expect(backend.booted[0]!.creates).toEqual([{ id: POD, bundle: request(POD, {}).bundle, process: { terminal: false }, stdio: { stdin: false, stdout: true, stderr: true }, log: false }]);
    expect(await record()).toEqual({ format: 1, namespace: NS, pod: POD, sandbox: POD, containers: [POD], server: { pid: process.pid, startTime: readProcStat(process.pid)!.startTime } });
    expect(pods.hostPid(POD)).toBe(4242);
    expect(pods.hostPid('unknown')).toBe(0);
  });

  it('a sandbox hostname the network config would refuse is left out', async () => {
    await pods.createContainer(sandboxReq({}, { hostname: '-bad name', linux: { namespaces: [{ type: 'network', path: '/run/netns/x' }] } }));
    expect(backend.booted[0]!.config.network).toEqual({ netns: '/run/netns/x' });
  });

  it('without a network namespace path the VM has no network; a terminal has one output', async () => {
    const req = { ...request('solo', {}, { linux: { namespaces: [{ type: 'network' }] } }), stdio: { stdin: true, terminal: true } };
    await pods.createContainer(req);
    expect(backend.booted[0]!.config).toEqual({ id: 'solo', stateDir, cpus: 1, memoryMiB: 256, agentPorts: POD_AGENT_PORTS });
    expect(backend.booted[0]!.creates[0]).toMatchObject({ process: { terminal: true }, stdio: { stdin: true, stdout: true, stderr: false } });
  });

  it('creates of one pod at once boot one VM: the app containers wait for it and join it', async () => {
    const results = await Promise.all([pods.createContainer(sandboxReq()), pods.createContainer(appReq('app1')), pods.createContainer(appReq('app2'))]);
    expect(backend.booted).toHaveLength(1);
    for (const r of results) expect(r.pod.sandbox).toBe(backend.booted[0]);
    expect([...backend.booted[0]!.containers.keys()].sort()).toEqual(['app1', 'app2', POD].sort());
    expect((await record()).containers.sort()).toEqual(['app1', 'app2', POD].sort());
  });

  it('containers without a CRI type naming one sandbox at once boot one VM', async () => {
    const a = request('a', { 'io.vmpod.sandbox': 'shared' });
    const b = request('b', { 'io.vmpod.sandbox': 'shared' });
    const [ra, rb] = await Promise.all([pods.createContainer(a), pods.createContainer(b)]);
    expect(backend.booted).toHaveLength(1);
    expect(ra.pod).toBe(rb.pod);
  });

  it('an app container whose pod is not here: NOT_FOUND, nothing booted or recorded', async () => {
    const error = await pods.createContainer(appReq('lost')).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TtrpcError);
    expect((error as TtrpcError).grpcCode).toBe(GrpcCode.NOT_FOUND);
    expect(backend.booted).toHaveLength(0);
    expect(await fs.readdir(podRecordsDir(stateDir, NS)).catch(() => [])).toEqual([]);
  });

  it('bad size annotations are refused before anything is booted', async () => {
    await expect(pods.createContainer(sandboxReq({ [CRI_SANDBOX_MEMORY]: 'lots' }))).rejects.toThrow(InvalidArgumentError);
    expect(backend.booted).toHaveLength(0);
    expect(await fs.readdir(podRecordsDir(stateDir, NS)).catch(() => [])).toEqual([]);
  });

  it('a second sandbox container of a pod, or a task id in use, is refused', async () => {
    await pods.createContainer(sandboxReq());
    await expect(pods.createContainer(sandboxReq())).rejects.toThrow(/already exists/u);
    await pods.createContainer(appReq('app'));
    await expect(pods.createContainer(appReq('app'))).rejects.toThrow(/already exists/u);
    expect(backend.booted).toHaveLength(1);
  });

  it('release of an app container keeps the VM; release of the last deletes it and the record', async () => {
    await pods.createContainer(sandboxReq());
    await pods.createContainer(appReq('app'));
    const vm = backend.booted[0]!;
    await pods.releaseContainer('app');
    expect(vm.containers.get('app')!.deleted).toBe(1);
    expect(vm.deletes).toBe(0);
    expect((await record()).containers).toEqual([POD]);
    expect(pods.podOf('app')).toBeUndefined();
    await pods.releaseContainer(POD);
    expect(vm.deletes).toBe(1);
    await expect(fs.stat(recordFile())).rejects.toThrow();
    expect(pods.hostPid(POD)).toBe(0);
    // Again: nothing to do.
    await pods.releaseContainer(POD);
    expect(vm.deletes).toBe(1);
    // A new sandbox container of the same pod boots a new VM.
    await pods.createContainer(sandboxReq());
    expect(backend.booted).toHaveLength(2);
  });

  it('a failed boot leaves no record; a failed create of the sandbox container deletes the new VM', async () => {
    backend.failBoot = new Error('no guest');
    await expect(pods.createContainer(sandboxReq())).rejects.toThrow('no guest');
    await expect(fs.stat(recordFile())).rejects.toThrow();
    backend.failBoot = undefined;
    const failing = backend.boot.bind(backend);
    backend.boot = async (config) => {
      const s = (await failing(config)) as unknown as FakeSandbox;
      s.failCreate = new Error('bad bundle');
      return s as unknown as Sandbox;
    };
    await expect(pods.createContainer(sandboxReq())).rejects.toThrow('bad bundle');
    expect(backend.booted[0]!.deletes).toBe(1);
    await expect(fs.stat(recordFile())).rejects.toThrow();
    expect(pods.podOf(POD)).toBeUndefined();
  });

  it('a failed create of an app container leaves the pod as it was', async () => {
    await pods.createContainer(sandboxReq());
    backend.booted[0]!.failCreate = new Error('bad app');
    await expect(pods.createContainer(appReq('app'))).rejects.toThrow('bad app');
    expect(backend.booted[0]!.deletes).toBe(0);
    expect((await record()).containers).toEqual([POD]);
    expect(pods.podOf('app')).toBeUndefined();
  });

  it('the VM stopping on its own is told once per pod; the shim\'s own delete is not; releases still clean up', async () => {
    const told: string[] = [];
    pods.onVmExit((pod) => told.push(pod));
    await pods.createContainer(sandboxReq());
    await pods.createContainer(appReq('app'));
    const vm = backend.booted[0]!;
    vm.pid = undefined;
    vm.emit('stopped', { reason: 'unexpected', detail: 'SIGKILL' });
    vm.emit('stopped', { reason: 'unexpected', detail: 'SIGKILL' });
    expect(told).toEqual([POD]);
    expect(pods.podOf('app')!.vmExited).toBe(true);
    expect(pods.hostPid('app')).toBe(0);
    // No container can join a dead VM.
    await expect(pods.createContainer(appReq('late'))).rejects.toThrow(InvalidStateError);
    await pods.releaseContainer('app');
    expect(vm.containers.get('app')!.deleted).toBe(0); // gone with the VM: nothing to ask it
    await pods.releaseContainer(POD);
    expect(vm.deletes).toBe(1);
    await expect(fs.stat(recordFile())).rejects.toThrow();

    // Another pod, released normally: its 'stopped' (requested, from our delete) is not a death.
    await pods.createContainer(request('other', {}));
    await pods.releaseContainer('other');
    expect(told).toEqual([POD]);
  });

  it('a container delete that fails while the VM lives fails the release, and the task stays', async () => {
    await pods.createContainer(sandboxReq());
    await pods.createContainer(appReq('app'));
    const vm = backend.booted[0]!;
    vm.containers.get('app')!.failDelete = new Error('agent says no');
    await expect(pods.releaseContainer('app')).rejects.toThrow('agent says no');
    expect(pods.podOf('app')).toBeDefined();
    vm.containers.get('app')!.failDelete = undefined;
    await pods.releaseContainer('app');
    expect(pods.podOf('app')).toBeUndefined();
  });

  describe('cleanupAfterCrash', () => {
    let tasks: string;
    beforeEach(async () => {
      tasks = path.join(stateDir, 'tasks', NS);
      for (const id of [POD, 'app']) {
        await fs.mkdir(path.join(tasks, id), { recursive: true });
        await fs.writeFile(path.join(tasks, id, 'config.json'), JSON.stringify(id === POD ? sandboxReq().spec : appReq('app').spec));
      }
      await pods.createContainer(sandboxReq());
      await pods.createContainer(appReq('app'));
      // The server "dies": its objects are dropped; the VM stays recorded in the backend.
    });

    it('each task leaves the VM; the last one removes it and the record', async () => {
      const vm = backend.booted[0]!;
      await Pods.cleanupAfterCrash({ stateDir, namespace: NS, id: 'app', bundle: path.join(tasks, 'app'), backend });
      expect(vm.containers.get('app')!.deleted).toBe(1);
      expect(vm.detached).toBe(1);
      expect(backend.removed).toEqual([]);
      expect((await record()).containers).toEqual([POD]);
      await fs.rm(path.join(tasks, 'app'), { recursive: true }); // containerd removes the bundle after `delete`
      await Pods.cleanupAfterCrash({ stateDir, namespace: NS, id: POD, bundle: path.join(tasks, POD), backend });
      expect(backend.removed).toEqual([POD]);
      await expect(fs.stat(recordFile())).rejects.toThrow();
      // A task the records do not name: nothing to do.
      await Pods.cleanupAfterCrash({ stateDir, namespace: NS, id: 'app', bundle: path.join(tasks, 'app'), backend });
      expect(backend.removed).toEqual([POD]);
    });

    it('a pod whose server still runs is left to it; once that server is gone, the task is cleaned up', async () => {
      const server = spawn('sleep', ['60'], { stdio: 'ignore' });
      try {
        const stat = readProcStat(server.pid!)!;
        const r = await record();
        await fs.writeFile(recordFile(), JSON.stringify({ ...r, server: { pid: server.pid, startTime: stat.startTime } }));
        await Pods.cleanupAfterCrash({ stateDir, namespace: NS, id: 'app', bundle: path.join(tasks, 'app'), backend });
        expect(backend.booted[0]!.containers.get('app')!.deleted).toBe(0);
        expect((await record()).containers.sort()).toEqual(['app', POD].sort());
      } finally {
        server.kill('SIGKILL');
        await new Promise((resolve) => server.once('exit', resolve));
      }
      await Pods.cleanupAfterCrash({ stateDir, namespace: NS, id: 'app', bundle: path.join(tasks, 'app'), backend });
      expect(backend.booted[0]!.containers.get('app')!.deleted).toBe(1);
      expect((await record()).containers).toEqual([POD]);
    });

    it('a task containerd no longer has (no bundle folder) does not keep the VM', async () => {
      await fs.rm(path.join(tasks, 'app'), { recursive: true });
      await Pods.cleanupAfterCrash({ stateDir, namespace: NS, id: POD, bundle: path.join(tasks, POD), backend });
      expect(backend.removed).toEqual([POD]);
      await expect(fs.stat(recordFile())).rejects.toThrow();
    });

    it('two deletes at once: the VM is removed once, by whichever comes second', async () => {
      await Promise.all(
        [POD, 'app'].map(async (id) => {
          await Pods.cleanupAfterCrash({ stateDir, namespace: NS, id, bundle: path.join(tasks, id), backend });
          await fs.rm(path.join(tasks, id), { recursive: true });
        }),
      );
      // The first took itself out of the record under its lock; the second found no other task left.
      expect(backend.removed).toEqual([POD]);
      await expect(fs.stat(recordFile())).rejects.toThrow();
    });

    it('without config.json the record that names the task finds its pod', async () => {
      await fs.rm(path.join(tasks, POD, 'config.json'));
      await fs.rm(path.join(tasks, 'app'), { recursive: true });
      await Pods.cleanupAfterCrash({ stateDir, namespace: NS, id: POD, bundle: path.join(tasks, POD), backend });
      expect(backend.removed).toEqual([POD]);
    });
  });
});
