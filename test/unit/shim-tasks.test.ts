/**
 * The shim's Task service without a VM: TaskService over stand-ins of the pods (a scripted
 * container and its execs), of containerd's stdio and of the rootfs mounts. What containerd sees:
 * the events and their order, the answers and their gRPC codes in each state, exits reported only
 * once the output is out, waiters, VM death.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AgentError } from '../../src/agent/errors.js';
import type { ProcessIo } from '../../src/shim/io.js';
import type { CallContext } from '../../src/shim/proto/task-api.js';
import { TaskStatus } from '../../src/shim/proto/task-api.js';
import type { PodContainerRequest } from '../../src/shim/pods.js';
import { TaskService, type PodsApi, type TaskServiceDeps } from '../../src/shim/task-service.js';
import { GrpcCode, TtrpcError } from '../../src/shim/ttrpc/status.js';
import { silentLog } from '../../src/shim/log.js';

interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(error: unknown): void;
}
function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

const tick = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 5));
async function until(check: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 400; i++) {
    if (check()) return;
    await tick();
  }
  throw new Error(`never: ${what}`);
}

type Status = { exitCode: number; signal: number; oomKilled: boolean };

/** A scripted process: streams, a wait the test ends, the signals it got. */
class FakeProcess {
  readonly stdin = new PassThrough();
  readonly stdout = new PassThrough();
  readonly stderr: PassThrough | null;
  readonly exit = deferred<Status>();
  readonly signals: { signal: number | string; all?: boolean }[] = [];
  readonly sizes: { rows: number; cols: number }[] = [];
  constructor(terminal = false) {
    this.stderr = terminal ? null : new PassThrough();
    void this.exit.promise.catch(() => undefined);
  }
  wait(): Promise<Status> {
    return this.exit.promise;
  }
  async kill(signal: number | string): Promise<void> {
    this.signals.push({ signal });
  }
  async resizeTty(size: { rows: number; cols: number }): Promise<void> {
    this.sizes.push(size);
  }
  /** Ends with `status` after its output ended. */
  end(exitCode: number, oomKilled = false): void {
    this.stdout.end();
    this.stderr?.end();
    this.exit.resolve({ exitCode, signal: exitCode > 128 ? exitCode - 128 : 0, oomKilled });
  }
}

class FakeContainer {
  readonly init: FakeProcess;
  readonly execs = new Map<string, FakeProcess>();
  readonly execOptions: Record<string, unknown>[] = [];
  readonly calls: string[] = [];
  readonly updates: unknown[] = [];
  startGate: Promise<void> | undefined;
  execError: Error | undefined;
  constructor(terminal = false) {
    this.init = new FakeProcess(terminal);
  }
  get stdin() {
    return this.init.stdin;
  }
  get stdout() {
    return this.init.stdout;
  }
  get stderr() {
    return this.init.stderr;
  }
  wait(): Promise<Status> {
    return this.init.wait();
  }
  async start(): Promise<void> {
    this.calls.push('start');
    await this.startGate;
  }
  killError: Error | undefined;
  async kill(signal: number, options: { all?: boolean } = {}): Promise<void> {
    if (this.killError) throw this.killError;
    this.init.signals.push({ signal, all: options.all ?? false });
  }
  async exec(options: Record<string, unknown>): Promise<FakeProcess> {
    if (this.execError) throw this.execError;
    this.execOptions.push(options);
    const p = new FakeProcess(options['terminal'] === true);
    this.execs.set(options['id'] as string, p);
    return p;
  }
  async pause(): Promise<void> {
    this.calls.push('pause');
  }
  async resume(): Promise<void> {
    this.calls.push('resume');
  }
  async update(resources: unknown): Promise<void> {
    this.updates.push(resources);
  }
  async stats(): Promise<Record<string, unknown>> {
    return { containerId: 'c', timestamp: 1, cpu: { usageUsec: 5, userUsec: 3, systemUsec: 2 }, memory: { currentBytes: 10, maxBytes: null, peakBytes: null, oomKills: 0 }, pids: { current: 1, max: null } };
  }
  async resizeTty(size: { rows: number; cols: number }): Promise<void> {
    this.init.sizes.push(size);
  }
  async inspect(): Promise<Record<string, unknown>> {
    return { pid: 17, execs: [...this.execs.entries()].map(([execId], i) => ({ execId, pid: 30 + i, status: 'running' })) };
  }
}

class FakePods implements PodsApi {
  readonly containers = new Map<string, FakeContainer>();
  readonly released: string[] = [];
  readonly pods = new Map<string, string>();
  createError: Error | undefined;
  terminal = false;
  #vmExit: ((podId: string) => void)[] = [];
  async createContainer(request: PodContainerRequest): Promise<never> {
    if (this.createError) throw this.createError;
    const c = new FakeContainer(request.stdio.terminal);
    this.containers.set(request.id, c);
    const pod = (request.spec['annotations'] as Record<string, string> | undefined)?.['io.kubernetes.cri.sandbox-id'] ?? request.id;
    this.pods.set(request.id, pod);
    return { pod: { name: pod }, container: c } as never;
  }
  onVmExit(cb: (podId: string) => void): void {
    this.#vmExit.push(cb);
  }
  vmExit(podId: string): void {
    for (const cb of this.#vmExit) cb(podId);
  }
  async releaseContainer(id: string): Promise<void> {
    this.released.push(id);
  }
  hostPid(): number {
    return 4242;
  }
}

/** containerd's end of one process's stdio: what reached it, and a close the test may hold. */
class FakeIo implements ProcessIo {
  stdin: PassThrough | null;
  stdout: Writable | null;
  stderr: Writable | null;
  readonly out: string[] = [];
  readonly err: string[] = [];
  closeGate: Promise<void> | undefined;
  closed = false;
  stdinClosed = false;
  constructor(readonly uris: { stdin: string; stdout: string; stderr: string; terminal: boolean }) {
    this.stdin = uris.stdin === '' ? null : new PassThrough();
    this.stdout = uris.stdout === '' ? null : new Writable({ write: (chunk, _e, cb) => (this.out.push(String(chunk)), cb()) });
    this.stderr = uris.stderr === '' || uris.terminal ? null : new Writable({ write: (chunk, _e, cb) => (this.err.push(String(chunk)), cb()) });
  }
  closeStdin(): void {
    this.stdinClosed = true;
    this.stdin?.end();
  }
  forced = false;
  async close(options: { force?: boolean } = {}): Promise<void> {
    if (options.force === true) this.forced = true;
    else await this.closeGate;
    this.closed = true;
  }
}

interface Event {
  topic: string;
  type: string;
  event: Record<string, unknown>;
}

let dir: string;
let bundle: string;
let pods: FakePods;
let ios: FakeIo[];
let events: Event[];
let mounted: string[];
let unmounted: string[];
let idle: number;
let service: TaskService;
let metricsInput: unknown[];

const ctx = (): CallContext => ({ signal: new AbortController().signal, namespace: 'default', metadata: {} });

function makeBundle(name: string, annotations: Record<string, string> = {}): string {
  const b = path.join(dir, name);
  fs.mkdirSync(path.join(b, 'rootfs'), { recursive: true });
  fs.writeFileSync(path.join(b, 'config.json'), JSON.stringify({ ociVersion: '1.0.2', process: { args: ['sh'] }, annotations }));
  return b;
}

function newService(options: { drainTimeoutMs?: number; execExitTimeoutMs?: number } = {}): TaskService {
  const deps: TaskServiceDeps = {
    pods,
    mountRootfs: async (b) => void mounted.push(b),
    unmountRootfs: async (b) => void unmounted.push(b),
    openProcessIo: async (uris) => {
      const io = new FakeIo(uris);
      ios.push(io);
      return io;
    },
    metricsAny: (stats) => {
      metricsInput.push(stats);
      return { typeUrl: 'io.containerd.cgroups.v2.Metrics', value: Buffer.from('m') };
    },
  };
  return new TaskService({ namespace: 'default', publisher: { publish: (topic, type, event) => void events.push({ topic, type, event: event as Record<string, unknown> }) }, log: silentLog, onIdle: () => void idle++, deps, ...options });
}

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-shimtasks-'));
  bundle = makeBundle('t1');
  pods = new FakePods();
  ios = [];
  events = [];
  mounted = [];
  unmounted = [];
  metricsInput = [];
  idle = 0;
  service = newService();
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

const rootfs = [{ type: 'overlay', source: 'overlay', target: '', options: ['lowerdir=/a', 'upperdir=/b', 'workdir=/c'] }];

async function create(id = 't1', b = bundle, stdio: Partial<{ stdin: string; stdout: string; stderr: string; terminal: boolean }> = {}) {
  return service.create({ id, bundle: b, rootfs, terminal: false, stdin: '', stdout: '/fifo/out', stderr: '/fifo/err', checkpoint: '', parentCheckpoint: '', options: null, ...stdio }, ctx());
}

function execSpec(args: string[], extra: Record<string, unknown> = {}) {
  return { typeUrl: 'types.containerd.io/opencontainers/runtime-spec/1/Process', value: Buffer.from(JSON.stringify({ args, cwd: '/', env: ['A=1'], ...extra })) };
}

async function rejectsWith(promise: Promise<unknown>, code: number, message?: RegExp): Promise<void> {
  const error = await promise.then(() => undefined, (e: unknown) => e);
  expect(error, 'the call should fail').toBeInstanceOf(TtrpcError);
  expect((error as TtrpcError).grpcCode).toBe(code);
  if (message) expect((error as Error).message).toMatch(message);
}

const topics = (): string[] => events.map((e) => e.topic);

describe('a task from create to delete', () => {
  it('publishes create, start, exit, delete in order, with the pid, status and ids containerd reads', async () => {
    expect((await create()).pid).toBe(4242);
    expect(mounted).toEqual([bundle]);
    expect(events[0]).toMatchObject({ topic: '/tasks/create', type: 'containerd.events.TaskCreate', event: { containerId: 't1', bundle, pid: 4242, rootfs, io: { stdin: '', stdout: '/fifo/out', stderr: '/fifo/err', terminal: false } } });
    expect((await service.state({ id: 't1', execId: '' })).status).toBe(TaskStatus.CREATED);
    expect(await service.start({ id: 't1', execId: '' }, ctx())).toEqual({ pid: 4242 });
    expect((await service.state({ id: 't1', execId: '' })).status).toBe(TaskStatus.RUNNING);
    const c = pods.containers.get('t1')!;
    c.init.stdout.write('out\n');
    c.init.stderr!.write('err\n');
    c.init.end(7);
    const waited = await service.wait({ id: 't1', execId: '' }, ctx());
    expect(waited.exitStatus).toBe(7);
    expect(waited.exitedAt).toBeInstanceOf(Date);
    expect(ios[0]!.out.join('')).toBe('out\n');
    expect(ios[0]!.err.join('')).toBe('err\n');
    const state = await service.state({ id: 't1', execId: '' });
    expect(state).toMatchObject({ id: 't1', bundle, pid: 4242, status: TaskStatus.STOPPED, exitStatus: 7, stdout: '/fifo/out', stderr: '/fifo/err', terminal: false, execId: '' });
    const deleted = await service.delete({ id: 't1', execId: '' }, ctx());
    expect(deleted).toEqual({ pid: 4242, exitStatus: 7, exitedAt: waited.exitedAt });
    expect(pods.released).toEqual(['t1']);
    expect(unmounted).toEqual([bundle]);
    expect(topics()).toEqual(['/tasks/create', '/tasks/start', '/tasks/exit', '/tasks/delete']);
    expect(events[2]!).toMatchObject({ type: 'containerd.events.TaskExit', event: { containerId: 't1', id: 't1', pid: 4242, exitStatus: 7, exitedAt: waited.exitedAt } });
    expect(events[3]!).toMatchObject({ type: 'containerd.events.TaskDelete', event: { containerId: 't1', pid: 4242, exitStatus: 7 } });
    await rejectsWith(service.state({ id: 't1', execId: '' }), GrpcCode.NOT_FOUND);
    await rejectsWith(service.delete({ id: 't1', execId: '' }, ctx()), GrpcCode.NOT_FOUND);
  });

  it('reports the exit only once the output reached containerd (the io closed), not when the status is known', async () => {
    await create();
    await service.start({ id: 't1', execId: '' }, ctx());
    const io = ios[0]!;
    const hold = deferred<void>();
    io.closeGate = hold.promise;
    let waited = false;
    void service.wait({ id: 't1', execId: '' }, ctx()).then(() => (waited = true));
    const c = pods.containers.get('t1')!;
    c.init.stdout.write('last words\n');
    c.init.end(0);
    await until(() => io.out.length > 0, 'the output piped');
    await tick();
    expect(topics()).not.toContain('/tasks/exit');
    expect(waited).toBe(false);
    // Not stopped yet: a Delete now is refused, as for a running task.
    expect((await service.state({ id: 't1', execId: '' })).status).toBe(TaskStatus.RUNNING);
    await rejectsWith(service.delete({ id: 't1', execId: '' }, ctx()), GrpcCode.FAILED_PRECONDITION);
    await rejectsWith(service.kill({ id: 't1', execId: '', signal: 9, all: false }, ctx()), GrpcCode.NOT_FOUND, /process already finished/u);
    hold.resolve();
    await until(() => waited, 'Wait answered');
    expect(topics()).toEqual(['/tasks/create', '/tasks/start', '/tasks/exit']);
    expect(io.closed).toBe(true);
  });

  it('waits for the output to end (not only for the status) before closing containerd\'s ends', async () => {
    await create();
    await service.start({ id: 't1', execId: '' }, ctx());
    const c = pods.containers.get('t1')!;
    // The status comes before the end of the streams (the agent's frames can arrive so).
    c.init.exit.resolve({ exitCode: 3, signal: 0, oomKilled: false });
    await tick();
    expect(topics()).not.toContain('/tasks/exit');
    c.init.stdout.end('tail\n');
    c.init.stderr!.end();
    const waited = await service.wait({ id: 't1', execId: '' }, ctx());
    expect(waited.exitStatus).toBe(3);
    expect(ios[0]!.out.join('')).toBe('tail\n');
  });

  it('publishes /tasks/oom before the exit of a process the kernel killed for memory', async () => {
    await create();
    await service.start({ id: 't1', execId: '' }, ctx());
    pods.containers.get('t1')!.init.end(137, true);
    await service.wait({ id: 't1', execId: '' }, ctx());
    expect(topics()).toEqual(['/tasks/create', '/tasks/start', '/tasks/oom', '/tasks/exit']);
    expect(events[2]).toMatchObject({ type: 'containerd.events.TaskOOM', event: { containerId: 't1' } });
  });

  it('publishes the start before the exit of a process that exits while Start is still answering', async () => {
    await create();
    const c = pods.containers.get('t1')!;
    const gate = deferred<void>();
    c.startGate = gate.promise;
    const started = service.start({ id: 't1', execId: '' }, ctx());
    await until(() => c.calls.includes('start'), 'start called');
    c.init.end(0);
    await tick();
    await tick();
    expect(topics()).toEqual(['/tasks/create']);
    gate.resolve();
    await started;
    await service.wait({ id: 't1', execId: '' }, ctx());
    expect(topics()).toEqual(['/tasks/create', '/tasks/start', '/tasks/exit']);
  });

  it('answers every waiter, and a Wait after the exit at once', async () => {
    await create();
    await service.start({ id: 't1', execId: '' }, ctx());
    const waits = [1, 2, 3].map(() => service.wait({ id: 't1', execId: '' }, ctx()));
    pods.containers.get('t1')!.init.end(1);
    const results = await Promise.all(waits);
    expect(results.map((r) => r.exitStatus)).toEqual([1, 1, 1]);
    expect((await service.wait({ id: 't1', execId: '' }, ctx())).exitedAt).toEqual(results[0]!.exitedAt);
  });

  it('gives the waiters of a task deleted before it ran its status, and publishes no exit for it', async () => {
    await create();
    const waiting = service.wait({ id: 't1', execId: '' }, ctx());
    const deleted = await service.delete({ id: 't1', execId: '' }, ctx());
    expect(deleted.exitStatus).toBe(137);
    expect((await waiting).exitStatus).toBe(137);
    // The container's wait ending afterwards (the VM container deleted) reports nothing more.
    pods.containers.get('t1')!.init.exit.reject(new Error('gone'));
    await tick();
    expect(topics()).toEqual(['/tasks/create', '/tasks/delete']);
    expect(ios[0]!.closed).toBe(true);
    expect(ios[0]!.forced).toBe(true);
  });

  it('an exit whose output cannot be delivered is reported after the bound, and Delete closes containerd\'s ends by force', async () => {
    service = newService({ drainTimeoutMs: 50 });
    await create();
    await service.start({ id: 't1', execId: '' }, ctx());
    ios[0]!.closeGate = new Promise<void>(() => undefined);
    pods.containers.get('t1')!.init.end(2);
    expect((await service.wait({ id: 't1', execId: '' }, ctx())).exitStatus).toBe(2);
    expect(ios[0]!.forced).toBe(false);
    expect((await service.delete({ id: 't1', execId: '' }, ctx())).exitStatus).toBe(2);
    expect(ios[0]!.forced).toBe(true);
    expect(topics()).toEqual(['/tasks/create', '/tasks/start', '/tasks/exit', '/tasks/delete']);
  });

  it('gives up a Wait whose call is cancelled, without ending the others', async () => {
    await create();
    const controller = new AbortController();
    const cancelled = service.wait({ id: 't1', execId: '' }, { ...ctx(), signal: controller.signal });
    const other = service.wait({ id: 't1', execId: '' }, ctx());
    controller.abort();
    await rejectsWith(cancelled, GrpcCode.CANCELLED);
    await service.start({ id: 't1', execId: '' }, ctx());
    pods.containers.get('t1')!.init.end(0);
    expect((await other).exitStatus).toBe(0);
  });
});

describe('refusals, with the codes containerd\'s runc shim answers', () => {
  it('a second Start (FAILED_PRECONDITION), a Start after the exit, a Start of an unknown exec (NOT_FOUND), an unknown task (NOT_FOUND)', async () => {
    await create();
    await service.start({ id: 't1', execId: '' }, ctx());
    await rejectsWith(service.start({ id: 't1', execId: '' }, ctx()), GrpcCode.FAILED_PRECONDITION, /cannot start a running process/u);
    await rejectsWith(service.start({ id: 't1', execId: 'nope' }, ctx()), GrpcCode.NOT_FOUND, /process does not exist nope/u);
    await rejectsWith(service.start({ id: 'other', execId: '' }, ctx()), GrpcCode.NOT_FOUND);
    pods.containers.get('t1')!.init.end(0);
    await service.wait({ id: 't1', execId: '' }, ctx());
    await rejectsWith(service.start({ id: 't1', execId: '' }, ctx()), GrpcCode.FAILED_PRECONDITION, /cannot start a stopped process/u);
    expect(pods.containers.get('t1')!.calls.filter((c) => c === 'start')).toHaveLength(1);
  });

  it('Delete of a running or paused task: FAILED_PRECONDITION, and nothing released', async () => {
    await create();
    await service.start({ id: 't1', execId: '' }, ctx());
    await rejectsWith(service.delete({ id: 't1', execId: '' }, ctx()), GrpcCode.FAILED_PRECONDITION, /cannot delete a running process/u);
    await service.pause({ id: 't1' }, ctx());
    await rejectsWith(service.delete({ id: 't1', execId: '' }, ctx()), GrpcCode.FAILED_PRECONDITION, /paused/u);
    expect(pods.released).toEqual([]);
    expect(unmounted).toEqual([]);
    expect((await service.state({ id: 't1', execId: '' })).status).toBe(TaskStatus.PAUSED);
  });

  it('Kill of a stopped task: NOT_FOUND "process already finished"; Kill passes the signal and `all` on', async () => {
    await create();
    await service.start({ id: 't1', execId: '' }, ctx());
    await service.kill({ id: 't1', execId: '', signal: 15, all: true }, ctx());
    const c = pods.containers.get('t1')!;
    expect(c.init.signals).toEqual([{ signal: 15, all: true }]);
    c.init.end(143);
    await service.wait({ id: 't1', execId: '' }, ctx());
    await rejectsWith(service.kill({ id: 't1', execId: '', signal: 9, all: false }, ctx()), GrpcCode.NOT_FOUND, /process already finished/u);
    expect(c.init.signals).toHaveLength(1);
  });

  it('Kill of a process that ended in the guest before its exit reached the shim: NOT_FOUND, as containerd\'s CRI expects when it stops a container', async () => {
    await create();
    await service.start({ id: 't1', execId: '' }, ctx());
    const c = pods.containers.get('t1')!;
    c.killError = new AgentError('Signal', 'FAILED_PRECONDITION', 'container "t1" is not running');
    await rejectsWith(service.kill({ id: 't1', execId: '', signal: 9, all: false }, ctx()), GrpcCode.NOT_FOUND, /process already finished/u);
    c.killError = new AgentError('Signal', 'INTERNAL', 'something else');
    const other = await service.kill({ id: 't1', execId: '', signal: 9, all: false }, ctx()).then(() => undefined, (e: unknown) => e);
    expect(other).toBeInstanceOf(AgentError);
  });

  it('Exec: an id in use (ALREADY_EXISTS), in a task not running (FAILED_PRECONDITION), without args (INVALID_ARGUMENT); Checkpoint: UNIMPLEMENTED', async () => {
    await create();
    await rejectsWith(service.exec({ id: 't1', execId: 'e1', terminal: false, stdin: '', stdout: '', stderr: '', spec: execSpec(['true']) }), GrpcCode.FAILED_PRECONDITION, /created/u);
    await service.start({ id: 't1', execId: '' }, ctx());
    await service.exec({ id: 't1', execId: 'e1', terminal: false, stdin: '', stdout: '', stderr: '', spec: execSpec(['true']) });
    await rejectsWith(service.exec({ id: 't1', execId: 'e1', terminal: false, stdin: '', stdout: '', stderr: '', spec: execSpec(['true']) }), GrpcCode.ALREADY_EXISTS);
    await rejectsWith(service.exec({ id: 't1', execId: 'e2', terminal: false, stdin: '', stdout: '', stderr: '', spec: execSpec([]) }), GrpcCode.INVALID_ARGUMENT);
    await rejectsWith(service.exec({ id: 't1', execId: 'e3', terminal: false, stdin: '', stdout: '', stderr: '', spec: null }), GrpcCode.INVALID_ARGUMENT);
    // An exec not started yet cannot be signalled.
    await rejectsWith(service.kill({ id: 't1', execId: 'e1', signal: 9, all: false }, ctx()), GrpcCode.FAILED_PRECONDITION, /process not created/u);
    await rejectsWith(service.checkpoint({ id: 't1', path: '/x', options: null }), GrpcCode.UNIMPLEMENTED);
  });

  it('Pause of a created task and Resume of a running one: FAILED_PRECONDITION', async () => {
    await create();
    await rejectsWith(service.pause({ id: 't1' }, ctx()), GrpcCode.FAILED_PRECONDITION);
    await service.start({ id: 't1', execId: '' }, ctx());
    await rejectsWith(service.resume({ id: 't1' }, ctx()), GrpcCode.FAILED_PRECONDITION);
    expect(pods.containers.get('t1')!.calls).toEqual(['start']);
  });

  it('Create: an id in use (ALREADY_EXISTS), a relative bundle or a checkpoint refused before anything is made', async () => {
    await create();
    await rejectsWith(create('t1'), GrpcCode.ALREADY_EXISTS);
    await rejectsWith(create('t2', 'relative/bundle'), GrpcCode.INVALID_ARGUMENT);
    await rejectsWith(create('t2', `${dir}/../t1`), GrpcCode.INVALID_ARGUMENT);
    await rejectsWith(service.create({ id: 't3', bundle: makeBundle('t3'), rootfs, terminal: false, stdin: '', stdout: '', stderr: '', checkpoint: '/cp', parentCheckpoint: '', options: null }, ctx()), GrpcCode.UNIMPLEMENTED);
    await rejectsWith(create('../x', bundle), GrpcCode.INVALID_ARGUMENT);
    expect(mounted).toEqual([bundle]);
    expect([...pods.containers.keys()]).toEqual(['t1']);
  });

  it('Create that fails in the pod undoes the mount and the io, and the id can be used again', async () => {
    pods.createError = new Error('boot failed');
    await expect(create()).rejects.toThrow('boot failed');
    expect(mounted).toEqual([bundle]);
    expect(unmounted).toEqual([bundle]);
    expect(ios[0]!.closed).toBe(true);
    expect(events).toEqual([]);
    pods.createError = undefined;
    expect((await create()).pid).toBe(4242);
  });
});

describe('execs', () => {
  it('exec-added at Exec, exec-started at Start; Wait on the exec; its exit before its delete, which publishes nothing', async () => {
    await create();
    await service.start({ id: 't1', execId: '' }, ctx());
    await service.exec({ id: 't1', execId: 'e1', terminal: false, stdin: '', stdout: '/fifo/e1-out', stderr: '/fifo/e1-err', spec: execSpec(['sh', '-c', 'echo hi; exit 4'], { user: { uid: 5, gid: 6 } }) });
    expect(events.at(-1)).toMatchObject({ topic: '/tasks/exec-added', type: 'containerd.events.TaskExecAdded', event: { containerId: 't1', execId: 'e1' } });
    expect((await service.state({ id: 't1', execId: 'e1' })).status).toBe(TaskStatus.CREATED);
    expect(await service.start({ id: 't1', execId: 'e1' }, ctx())).toEqual({ pid: 4242 });
    const c = pods.containers.get('t1')!;
    expect(c.execOptions[0]).toMatchObject({ id: 'e1', args: ['sh', '-c', 'echo hi; exit 4'], env: ['A=1'], cwd: '/', user: { uid: 5, gid: 6 }, terminal: false, stdio: { stdin: false, stdout: true, stderr: true } });
    expect(events.at(-1)).toMatchObject({ topic: '/tasks/exec-started', type: 'containerd.events.TaskExecStarted', event: { containerId: 't1', execId: 'e1', pid: 4242 } });
    const waiting = service.wait({ id: 't1', execId: 'e1' }, ctx());
    const e1 = c.execs.get('e1')!;
    e1.stdout.write('hi\n');
    e1.end(4);
    expect((await waiting).exitStatus).toBe(4);
    expect(ios[1]!.out.join('')).toBe('hi\n');
    expect(events.at(-1)).toMatchObject({ topic: '/tasks/exit', event: { containerId: 't1', id: 'e1', exitStatus: 4 } });
    // The task runs on.
    expect((await service.state({ id: 't1', execId: '' })).status).toBe(TaskStatus.RUNNING);
    expect((await service.state({ id: 't1', execId: 'e1' })).status).toBe(TaskStatus.STOPPED);
    expect((await service.delete({ id: 't1', execId: 'e1' }, ctx())).exitStatus).toBe(4);
    expect(topics().filter((t) => t === '/tasks/delete')).toEqual([]);
    await rejectsWith(service.state({ id: 't1', execId: 'e1' }), GrpcCode.NOT_FOUND);
    expect(pods.released).toEqual([]);
  });

  it('a running exec cannot be deleted; kill reaches it; a created exec can be deleted', async () => {
    await create();
    await service.start({ id: 't1', execId: '' }, ctx());
    await service.exec({ id: 't1', execId: 'e1', terminal: false, stdin: '', stdout: '', stderr: '', spec: execSpec(['sleep', '9']) });
    await service.exec({ id: 't1', execId: 'e2', terminal: false, stdin: '', stdout: '', stderr: '', spec: execSpec(['true']) });
    await service.start({ id: 't1', execId: 'e1' }, ctx());
    await rejectsWith(service.delete({ id: 't1', execId: 'e1' }, ctx()), GrpcCode.FAILED_PRECONDITION);
    await service.kill({ id: 't1', execId: 'e1', signal: 9, all: false }, ctx());
    const c = pods.containers.get('t1')!;
    expect(c.execs.get('e1')!.signals).toEqual([{ signal: 9 }]);
    expect(c.init.signals).toEqual([]);
    expect(await service.delete({ id: 't1', execId: 'e2' }, ctx())).toEqual({ pid: 0, exitStatus: 0, exitedAt: null });
  });

  it('the init\'s exit goes out after the exits of its execs, which the pid namespace takes down with it', async () => {
    await create();
    await service.start({ id: 't1', execId: '' }, ctx());
    await service.exec({ id: 't1', execId: 'e1', terminal: false, stdin: '', stdout: '', stderr: '', spec: execSpec(['sleep', '9']) });
    await service.start({ id: 't1', execId: 'e1' }, ctx());
    const c = pods.containers.get('t1')!;
    c.init.end(0);
    await tick();
    await tick();
    expect(topics()).not.toContain('/tasks/exit');
    c.execs.get('e1')!.end(137);
    await service.wait({ id: 't1', execId: '' }, ctx());
    const exits = events.filter((e) => e.topic === '/tasks/exit').map((e) => e.event['id']);
    expect(exits).toEqual(['e1', 't1']);
  });

  it('an exec that cannot be executed fails its Start, stays created, closes its io', async () => {
    await create();
    await service.start({ id: 't1', execId: '' }, ctx());
    await service.exec({ id: 't1', execId: 'e1', terminal: false, stdin: '', stdout: '/fifo/o', stderr: '', spec: execSpec(['nope']) });
    pods.containers.get('t1')!.execError = new Error('command "nope" not found');
    await expect(service.start({ id: 't1', execId: 'e1' }, ctx())).rejects.toThrow('not found');
    expect(ios[1]!.closed).toBe(true);
    expect((await service.state({ id: 't1', execId: 'e1' })).status).toBe(TaskStatus.CREATED);
    expect(topics()).not.toContain('/tasks/exec-started');
  });

  it('a resize of a process whose exit is known but not yet reported is a no-op; of a stopped one, FAILED_PRECONDITION', async () => {
    await create('t1', bundle, { terminal: true, stdin: '/fifo/in', stdout: '/fifo/out', stderr: '' });
    await service.start({ id: 't1', execId: '' }, ctx());
    const io = ios[0]!;
    const hold = deferred<void>();
    io.closeGate = hold.promise;
    const c = pods.containers.get('t1')!;
    c.init.end(0);
    await tick();
    expect(topics()).not.toContain('/tasks/exit');
    await service.resizePty({ id: 't1', execId: '', width: 80, height: 24 }, ctx());
    expect(c.init.sizes).toEqual([]);
    hold.resolve();
    await service.wait({ id: 't1', execId: '' }, ctx());
    await rejectsWith(service.resizePty({ id: 't1', execId: '', width: 80, height: 24 }, ctx()), GrpcCode.FAILED_PRECONDITION);
  });

  it('a terminal exec gets one output stream and its resizes', async () => {
    await create();
    await service.start({ id: 't1', execId: '' }, ctx());
    await service.exec({ id: 't1', execId: 'e1', terminal: true, stdin: '/fifo/in', stdout: '/fifo/out', stderr: '', spec: execSpec(['sh']) });
    await service.start({ id: 't1', execId: 'e1' }, ctx());
    const c = pods.containers.get('t1')!;
    expect(c.execOptions[0]).toMatchObject({ terminal: true, stdio: { stdin: true, stdout: true, stderr: false } });
    await service.resizePty({ id: 't1', execId: 'e1', width: 80, height: 24 }, ctx());
    await service.resizePty({ id: 't1', execId: '', width: 100, height: 30 }, ctx());
    expect(c.execs.get('e1')!.sizes).toEqual([{ rows: 24, cols: 80 }]);
    expect(c.init.sizes).toEqual([{ rows: 30, cols: 100 }]);
  });
});

describe('stdin', () => {
  it('passes containerd\'s input on and ends it at CloseIO, after what was written', async () => {
    await create('t1', bundle, { stdin: '/fifo/in' });
    const c = pods.containers.get('t1')!;
    const got: string[] = [];
    let ended = false;
    c.init.stdin.on('data', (d: Buffer) => got.push(String(d)));
    c.init.stdin.on('end', () => (ended = true));
    await service.start({ id: 't1', execId: '' }, ctx());
    ios[0]!.stdin!.write('hello\n');
    await service.closeIO({ id: 't1', execId: '', stdin: true });
    expect(ios[0]!.stdinClosed).toBe(true);
    await until(() => ended, 'the process\'s stdin ended');
    expect(got.join('')).toBe('hello\n');
  });
});

describe('pause, resume, update, stats, pids, connect, shutdown', () => {
  it('pause and resume publish paused and resumed; State says paused between', async () => {
    await create();
    await service.start({ id: 't1', execId: '' }, ctx());
    await service.pause({ id: 't1' }, ctx());
    expect((await service.state({ id: 't1', execId: '' })).status).toBe(TaskStatus.PAUSED);
    await service.resume({ id: 't1' }, ctx());
    expect((await service.state({ id: 't1', execId: '' })).status).toBe(TaskStatus.RUNNING);
    expect(topics()).toEqual(['/tasks/create', '/tasks/start', '/tasks/paused', '/tasks/resumed']);
    expect(events[2]).toMatchObject({ type: 'containerd.events.TaskPaused', event: { containerId: 't1' } });
    expect(events[3]).toMatchObject({ type: 'containerd.events.TaskResumed', event: { containerId: 't1' } });
  });

  it('update passes the LinuxResources vmpod applies (zeros meaning "unchanged" left out); stats go through metricsAny', async () => {
    await create();
    await service.start({ id: 't1', execId: '' }, ctx());
    const resources = { memory: { limit: 268435456, swap: 0 }, cpu: { quota: 50000, period: 100000, shares: 0 }, devices: [{ allow: false }] };
    await service.update({ id: 't1', resources: { typeUrl: 'types.containerd.io/opencontainers/runtime-spec/1/LinuxResources', value: Buffer.from(JSON.stringify(resources)) }, annotations: {} }, ctx());
    expect(pods.containers.get('t1')!.updates).toEqual([{ memory: { limit: 268435456 }, cpu: { quota: 50000, period: 100000 } }]);
    const stats = await service.stats({ id: 't1' }, ctx());
    expect(stats.stats).toEqual({ typeUrl: 'io.containerd.cgroups.v2.Metrics', value: Buffer.from('m') });
    expect(metricsInput).toHaveLength(1);
  });

  it('pids lists the guest pids of the init and the running execs; connect names this process and the task pid', async () => {
    await create();
    expect(await service.pids({ id: 't1' }, ctx())).toEqual({ processes: [] });
    await service.start({ id: 't1', execId: '' }, ctx());
    await service.exec({ id: 't1', execId: 'e1', terminal: false, stdin: '', stdout: '', stderr: '', spec: execSpec(['sleep', '9']) });
    await service.start({ id: 't1', execId: 'e1' }, ctx());
    expect(await service.pids({ id: 't1' }, ctx())).toEqual({ processes: [{ pid: 17 }, { pid: 30 }] });
    expect(await service.connect({ id: 't1' })).toEqual({ shimPid: process.pid, taskPid: 4242, version: '' });
    expect((await service.connect({ id: 'none' })).taskPid).toBe(0);
  });

  it('shutdown is a no-op while a task is left, and lets the server go once none is', async () => {
    await create();
    await service.shutdown({ id: 't1', now: false });
    await tick();
    expect(idle).toBe(0);
    await service.delete({ id: 't1', execId: '' }, ctx());
    await service.shutdown({ id: 't1', now: false });
    await until(() => idle === 1, 'onIdle called');
  });
});

describe('the VM dies', () => {
  it('every task of the pod exits 255 (exec first), other pods run on, and the service keeps answering until containerd deletes them', async () => {
    const b2 = makeBundle('t2', { 'io.kubernetes.cri.sandbox-id': 't1', 'io.kubernetes.cri.container-type': 'container' });
    const b3 = makeBundle('t3');
    await create();
    await create('t2', b2);
    await create('t3', b3);
    for (const id of ['t1', 't2', 't3']) await service.start({ id, execId: '' }, ctx());
    await service.exec({ id: 't2', execId: 'e1', terminal: false, stdin: '', stdout: '', stderr: '', spec: execSpec(['sleep', '9']) });
    await service.start({ id: 't2', execId: 'e1' }, ctx());
    await service.exec({ id: 't2', execId: 'e2', terminal: false, stdin: '', stdout: '', stderr: '', spec: execSpec(['true']) });
    pods.vmExit('t1');
    // The library's streams and waits of a dead VM end with errors.
    for (const id of ['t1', 't2']) {
      const c = pods.containers.get(id)!;
      c.init.stdout.destroy(new Error('agent gone'));
      c.init.stderr!.destroy(new Error('agent gone'));
      c.init.exit.reject(new Error('agent gone'));
    }
    pods.containers.get('t2')!.execs.get('e1')!.stdout.destroy();
    pods.containers.get('t2')!.execs.get('e1')!.stderr!.destroy();
    const [w1, w2, we] = await Promise.all([service.wait({ id: 't1', execId: '' }, ctx()), service.wait({ id: 't2', execId: '' }, ctx()), service.wait({ id: 't2', execId: 'e1' }, ctx())]);
    expect([w1.exitStatus, w2.exitStatus, we.exitStatus]).toEqual([255, 255, 255]);
    const exits = events.filter((e) => e.topic === '/tasks/exit').map((e) => `${e.event['containerId']}/${e.event['id']}`);
    expect(exits.sort()).toEqual(['t1/t1', 't2/e1', 't2/t2']);
    expect(exits.indexOf('t2/e1')).toBeLessThan(exits.indexOf('t2/t2'));
    // The exec never started cannot start now, and had no exit event.
    await rejectsWith(service.start({ id: 't2', execId: 'e2' }, ctx()), GrpcCode.FAILED_PRECONDITION);
    expect((await service.state({ id: 't3', execId: '' })).status).toBe(TaskStatus.RUNNING);
    expect((await service.state({ id: 't1', execId: '' })).status).toBe(TaskStatus.STOPPED);
    await rejectsWith(service.kill({ id: 't1', execId: '', signal: 9, all: true }, ctx()), GrpcCode.NOT_FOUND);
    expect((await service.delete({ id: 't2', execId: '' }, ctx())).exitStatus).toBe(255);
    expect((await service.delete({ id: 't1', execId: '' }, ctx())).exitStatus).toBe(255);
    expect(pods.released).toEqual(['t2', 't1']);
    expect(service.taskCount).toBe(1);
  });
});
