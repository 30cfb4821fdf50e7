/**
 * `containerd.task.v2.Task` over the library: the shim server's one TaskService answers
 * containerd for every task of its namespace. A task is a container in its pod's VM (see
 * pods.ts); its rootfs comes from containerd's mounts (rootfs.ts), its stdio from containerd's
 * fifos or URIs (io.ts), its stats from the guest cgroup (metrics.ts). The states, the refusals
 * and the order of the events are tasks.ts's.
 *
 * Pids: the pid of a task and of its execs is the pid of the pod's QEMU (the host process that
 * runs them, as Kata reports its hypervisor's); `Pids` lists the processes' pids in the guest.
 *
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import type { Container, Process } from '../container/container.js';
import { AgentError } from '../agent/errors.js';
import type { ContainerStats } from '../agent/messages.js';
import type { CallOptions } from '../options.js';
import { knownResources } from '../runtime/resources.js';
import type { ShimLog } from './log.js';
import { Pods, type Pod, type PodContainerRequest, type RuntimeSpec } from './pods.js';
import { mountRootfs, unmountRootfs } from './rootfs.js';
import { openProcessIo, type ProcessIo } from './io.js';
import { metricsAny } from './metrics.js';
import { decodeAny } from './proto/index.js';
import {
  TaskStatus,
  type AnyMessage,
  type CallContext,
  type CheckpointTaskRequest,
  type CloseIORequest,
  type ConnectRequest,
  type ConnectResponse,
  type CreateTaskRequest,
  type CreateTaskResponse,
  type DeleteRequest,
  type DeleteResponse,
  type Empty,
  type ExecProcessRequest,
  type KillRequest,
  type Mount,
  type PauseRequest,
  type PidsRequest,
  type PidsResponse,
  type ResizePtyRequest,
  type ResumeRequest,
  type ShutdownRequest,
  type StartRequest,
  type StartResponse,
  type StateRequest,
  type StateResponse,
  type StatsRequest,
  type StatsResponse,
  type TaskApi,
  type UpdateTaskRequest,
  type WaitRequest,
  type WaitResponse,
} from './proto/task-api.js';
import { Task, Tasks, VM_GONE_STATUS, type EventSink, type ExitRecord, type ProcessStdio, type TaskProcess } from './tasks.js';
import { GrpcCode, TtrpcError } from './ttrpc/status.js';

/** What the service needs of pods.ts (the class, or a stand-in in tests). */
export interface PodsApi {
  createContainer(request: PodContainerRequest, options?: CallOptions): Promise<{ pod: Pick<Pod, 'name'>; container: Container }>;
  onVmExit(cb: (podId: string) => void): void;
  releaseContainer(id: string, options?: CallOptions): Promise<void>;
  hostPid(id: string): number;
}

/** The service's collaborators; each defaults to the real one. */
export interface TaskServiceDeps {
  pods: PodsApi;
  mountRootfs(bundle: string, mounts: Mount[]): Promise<void>;
  unmountRootfs(bundle: string): Promise<void>;
  openProcessIo(uris: { stdin: string; stdout: string; stderr: string; terminal: boolean }, context: { id: string; namespace: string }): Promise<ProcessIo>;
  metricsAny(stats: ContainerStats): AnyMessage;
}

/** Options of {@link TaskService}. */
export interface TaskServiceOptions {
  /** containerd's namespace this server serves. */
  namespace: string;
  /** The library's state directory (default: its own default). */
  stateDir?: string | undefined;
  /** Where the events go (the server's EventPublisher). */
  publisher: EventSink;
  log: ShimLog;
  /** Called after a Shutdown when no task is left: the server may close and exit. */
  onIdle: () => void;
  /** @internal Stand-ins for tests. */
  deps?: Partial<TaskServiceDeps>;
  /** @internal How long an exit waits for its output (default 15 s). */
  drainTimeoutMs?: number;
  /** @internal How long an init's exit waits for its execs' (default 10 s). */
  execExitTimeoutMs?: number;
}

/** What runs a process: its task's container, the exec's Process once started, its stdio. */
interface Runner {
  container: Container;
  process?: Process;
  wiring?: Wiring;
  /** A Start is under way. */
  starting?: boolean;
}

type Proc = TaskProcess<Runner>;

/** The stdio of one process wired to containerd's ends. */
interface Wiring {
  /** Waits until the process's output ended and reached containerd's ends, then closes them. */
  drain(): Promise<void>;
  /** CloseIO: no more input after what containerd already wrote. */
  closeStdin(): void;
  /** Closes everything: a plain close passes on what was written first; `force` drops what is queued (Delete). */
  close(options?: { force?: boolean }): Promise<void>;
}

/** Pipes a process's streams to and from its ProcessIo. */
export function wireProcessIo(proc: { stdin: Writable | null; stdout: Readable | null; stderr: Readable | null }, io: ProcessIo): Wiring {
  const target = proc.stdin;
  const endTarget = (): void => {
    if (target && !target.writableEnded && !target.destroyed) target.end();
  };
  if (target) {
    if (io.stdin) {
      io.stdin.on('error', endTarget);
      io.stdin.once('close', endTarget);
      io.stdin.pipe(target);
    } else {
      endTarget();
    }
  } else {
    io.stdin?.resume();
  }
  const ended: Promise<void>[] = [];
  for (const [from, to] of [[proc.stdout, io.stdout], [proc.stderr, io.stderr]] as const) {
    if (!from) continue;
    ended.push(
      new Promise<void>((resolve) => {
        if (from.readableEnded || from.destroyed) resolve();
        from.once('end', resolve);
        from.once('close', resolve);
        from.once('error', () => resolve());
      }),
    );
    if (to) {
      to.on('error', () => {
        from.unpipe(to);
        from.resume();
      });
      from.pipe(to, { end: false });
    } else {
      from.resume();
    }
  }
  let closing: Promise<void> | undefined;
  let forced: Promise<void> | undefined;
  const close = (options: { force?: boolean } = {}): Promise<void> => {
    if (io.stdin && target) io.stdin.unpipe(target);
    endTarget();
    if (options.force === true) return (forced ??= io.close({ force: true }));
    return (closing ??= io.close());
  };
  return {
    async drain() {
      await Promise.all(ended);
      await close();
    },
    closeStdin() {
      io.closeStdin();
      if (!io.stdin || io.stdin.readableEnded || io.stdin.destroyed) endTarget();
    },
    close,
  };
}

const TASK_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/u;

const STATUS: Record<string, TaskStatus> = {
  created: TaskStatus.CREATED,
  running: TaskStatus.RUNNING,
  paused: TaskStatus.PAUSED,
  stopped: TaskStatus.STOPPED,
};

/** A runtime-spec Process (Exec's `spec`), the parts vmpod runs. */
interface SpecProcess {
  args?: unknown;
  env?: unknown;
  cwd?: unknown;
  terminal?: unknown;
  user?: { uid?: unknown; gid?: unknown; additionalGids?: unknown };
}

function callOptions(ctx: CallContext): CallOptions {
  return { signal: ctx.signal };
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** The Task service of one shim server (one containerd namespace). */
export class TaskService implements TaskApi {
  readonly #namespace: string;
  readonly #log: ShimLog;
  readonly #onIdle: () => void;
  readonly #deps: TaskServiceDeps;
  readonly #tasks: Tasks<Runner>;

  constructor(options: TaskServiceOptions) {
    this.#namespace = options.namespace;
    this.#log = options.log;
    this.#onIdle = options.onIdle;
    const d = options.deps ?? {};
    this.#deps = {
      pods: d.pods ?? new Pods({ ...(options.stateDir === undefined ? {} : { stateDir: options.stateDir }), namespace: options.namespace, log: options.log }),
      mountRootfs: d.mountRootfs ?? mountRootfs,
      unmountRootfs: d.unmountRootfs ?? unmountRootfs,
      openProcessIo: d.openProcessIo ?? openProcessIo,
      metricsAny: d.metricsAny ?? metricsAny,
    };
    this.#tasks = new Tasks<Runner>({
      events: options.publisher,
      log: options.log,
      ...(options.drainTimeoutMs === undefined ? {} : { drainTimeoutMs: options.drainTimeoutMs }),
      ...(options.execExitTimeoutMs === undefined ? {} : { execExitTimeoutMs: options.execExitTimeoutMs }),
    });
    this.#deps.pods.onVmExit((podId) => this.#vmExited(podId));
  }

  /** How many tasks it serves (or is creating). */
  get taskCount(): number {
    return this.#tasks.size;
  }

  async create(r: CreateTaskRequest, ctx: CallContext): Promise<CreateTaskResponse> {
    if (!TASK_ID.test(r.id)) throw new TtrpcError(GrpcCode.INVALID_ARGUMENT, `task id ${JSON.stringify(r.id)} is not valid`);
    if (!path.isAbsolute(r.bundle) || r.bundle.split('/').includes('..') || r.bundle.includes('\0')) {
      throw new TtrpcError(GrpcCode.INVALID_ARGUMENT, `task ${r.id}: bundle ${JSON.stringify(r.bundle)} is not an absolute path without ".."`);
    }
    if (r.checkpoint !== '' || r.parentCheckpoint !== '') throw new TtrpcError(GrpcCode.UNIMPLEMENTED, `task ${r.id}: restoring a checkpoint is not supported`);
    this.#tasks.reserve(r.id);
    const stdio: ProcessStdio = { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, terminal: r.terminal };
    const undo: (() => Promise<unknown>)[] = [];
    try {
      if (r.rootfs.length > 0) {
        await this.#deps.mountRootfs(r.bundle, r.rootfs);
        undo.push(() => this.#deps.unmountRootfs(r.bundle));
      }
      const spec = await readSpec(r.bundle, r.id);
      const io = await this.#deps.openProcessIo(stdio, { id: r.id, namespace: this.#namespace });
      undo.push(() => io.close());
      const { pod, container } = await this.#deps.pods.createContainer({ id: r.id, bundle: r.bundle, spec, stdio: { stdin: r.stdin !== '', terminal: r.terminal } }, callOptions(ctx));
      const task = new Task<Runner>(r.id, r.bundle, pod.name, stdio);
      const init = task.init;
      init.pid = this.#deps.pods.hostPid(r.id);
      init.handle = { container, wiring: wireProcessIo({ stdin: container.stdin, stdout: container.stdout, stderr: container.stderr }, io) };
      this.#tasks.add(task);
      this.#tasks.publish('/tasks/create', 'containerd.events.TaskCreate', {
        containerId: r.id,
        bundle: r.bundle,
        rootfs: r.rootfs,
        io: { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, terminal: r.terminal },
        checkpoint: r.checkpoint,
        pid: init.pid,
      });
      this.#log.info(`task ${r.id} created in pod ${pod.name}`);
      // Watched from creation on: a created task that is killed exits too.
      container.wait().then(
        (status) => this.#exited(task, init, status.exitCode, status.oomKilled),
        (error: unknown) => {
          if (!init.deleted) this.#log.warn(`${init.label}: its exit could not be read (${errorText(error)}): reported as ${VM_GONE_STATUS}`);
          this.#exited(task, init, VM_GONE_STATUS, false);
        },
      );
      return { pid: init.pid };
    } catch (error) {
      this.#tasks.unreserve(r.id);
      for (const step of undo.reverse()) {
        await step().catch((cleanup: unknown) => this.#log.warn(`task ${r.id}: undoing a failed create: ${errorText(cleanup)}`));
      }
      throw error;
    }
  }

  #exited(task: Task<Runner>, p: Proc, exitCode: number, oomKilled: boolean): void {
    const wiring = p.handle?.wiring;
    void this.#tasks.reportExit(task, p, { exitCode, oomKilled, drain: () => wiring?.drain() ?? Promise.resolve() }, p.pid);
  }

  #vmExited(podId: string): void {
    for (const task of this.#tasks.ofPod(podId)) {
      this.#log.warn(`task ${task.id}: the VM of pod ${podId} is gone: its processes exit with ${VM_GONE_STATUS}`);
      for (const p of [...task.execs.values(), task.init]) {
        if (p.finished || p.deleted) continue;
        if (!p.isInit && p.state === 'created' && p.handle?.starting !== true) {
          // An exec never started: it cannot start any more; no exit event (it had no start).
          p.state = 'stopped';
          p.settle({ exitStatus: VM_GONE_STATUS, exitedAt: new Date() });
          continue;
        }
        this.#exited(task, p, VM_GONE_STATUS, false);
      }
    }
  }

  async start(r: StartRequest, ctx: CallContext): Promise<StartResponse> {
    const task = this.#tasks.get(r.id);
    const p = task.process(r.execId);
    p.checkStart();
    const runner = p.handle ?? { container: task.init.handle!.container };
    if (runner.starting === true) throw new TtrpcError(GrpcCode.FAILED_PRECONDITION, `${p.label}: cannot start a running process`);
    if (!p.isInit) task.checkExecStart();
    runner.starting = true;
    p.handle = runner;
    try {
      return await p.starting(async () => (p.isInit ? this.#startInit(task, p, runner, ctx) : this.#startExec(task, p, runner, ctx)));
    } finally {
      runner.starting = false;
    }
  }

  async #startInit(task: Task<Runner>, p: Proc, runner: Runner, ctx: CallContext): Promise<StartResponse> {
    await runner.container.start(callOptions(ctx));
    if (p.state === 'created') p.state = 'running';
    this.#tasks.publish('/tasks/start', 'containerd.events.TaskStart', { containerId: task.id, pid: p.pid });
    this.#log.info(`${p.label} started`);
    return { pid: p.pid };
  }

  async #startExec(task: Task<Runner>, p: Proc, runner: Runner, ctx: CallContext): Promise<StartResponse> {
    const spec = p.spec as SpecProcess;
    const terminal = p.stdio.terminal;
    const io = await this.#deps.openProcessIo(p.stdio, { id: `${task.id}/${p.execId}`, namespace: this.#namespace });
    let proc: Process;
    try {
      proc = await runner.container.exec({
        id: p.execId,
        args: spec.args as string[],
        ...(spec.env === undefined ? {} : { env: spec.env as string[] }),
        ...(spec.cwd === undefined || spec.cwd === '' ? {} : { cwd: spec.cwd as string }),
        ...(spec.user === undefined ? {} : { user: userOf(spec.user) }),
        terminal,
        stdio: { stdin: p.stdio.stdin !== '', stdout: true, stderr: !terminal },
        ...callOptions(ctx),
      });
    } catch (error) {
      await io.close().catch(() => undefined);
      throw error;
    }
    runner.process = proc;
    runner.wiring = wireProcessIo(proc, io);
    p.pid = task.init.pid;
    if (p.state === 'created') p.state = 'running';
    this.#tasks.publish('/tasks/exec-started', 'containerd.events.TaskExecStarted', { containerId: task.id, execId: p.execId, pid: p.pid });
    this.#log.info(`${p.label} started`);
    proc.wait().then(
      (status) => this.#exited(task, p, status.exitCode, status.oomKilled),
      () => this.#exited(task, p, VM_GONE_STATUS, false),
    );
    return { pid: p.pid };
  }

  async delete(r: DeleteRequest, ctx: CallContext): Promise<DeleteResponse> {
    const task = this.#tasks.get(r.id);
    if (r.execId !== '') {
      const p = task.process(r.execId);
      p.checkDelete();
      // An exec deleted before it ran: status 0 and no exit time, as containerd's runc shim.
      const ran = p.exit !== undefined;
      const exit: ExitRecord = p.exit ?? { exitStatus: 0, exitedAt: new Date(0) };
      this.#tasks.removeExec(task, p, exit);
      await p.handle?.wiring?.close({ force: true }).catch(() => undefined);
      return { pid: p.pid, exitStatus: exit.exitStatus, exitedAt: ran ? exit.exitedAt : null };
    }
    const init = task.init;
    init.checkDelete();
    if (init.handle?.starting === true) throw new TtrpcError(GrpcCode.FAILED_PRECONDITION, `${init.label}: cannot delete a process being started`);
    // A task deleted before it ran is killed with its VM container: reported as SIGKILL, now.
    const exit: ExitRecord = init.exit ?? { exitStatus: 128 + 9, exitedAt: new Date() };
    // Forgotten first: a second Delete gets NOT_FOUND (which containerd takes as done).
    this.#tasks.remove(task, exit);
    const failures: unknown[] = [];
    // What a process wrote was passed on before its exit was reported; anything still queued now has no reader.
    for (const p of [...task.execs.values(), init]) await p.handle?.wiring?.close({ force: true }).catch((error: unknown) => failures.push(error));
    await this.#deps.pods.releaseContainer(task.id, callOptions(ctx)).catch((error: unknown) => failures.push(error));
    await this.#deps.unmountRootfs(task.bundle).catch((error: unknown) => failures.push(error));
    this.#tasks.publish('/tasks/delete', 'containerd.events.TaskDelete', { containerId: task.id, pid: init.pid, exitStatus: exit.exitStatus, exitedAt: exit.exitedAt });
    this.#log.info(`task ${task.id} deleted${failures.length > 0 ? ` (with errors: ${failures.map(errorText).join('; ')})` : ''}`);
    if (failures.length > 0) throw failures[0];
    return { pid: init.pid, exitStatus: exit.exitStatus, exitedAt: exit.exitedAt };
  }

  async exec(r: ExecProcessRequest): Promise<Empty> {
    const task = this.#tasks.get(r.id);
    task.checkExec(r.execId);
    if (r.spec === null) throw new TtrpcError(GrpcCode.INVALID_ARGUMENT, `exec ${r.execId} of task ${r.id}: no process spec`);
    const spec = decodeAny<SpecProcess>(r.spec);
    if (typeof spec !== 'object' || spec === null || !Array.isArray(spec.args) || spec.args.length === 0) {
      throw new TtrpcError(GrpcCode.INVALID_ARGUMENT, `exec ${r.execId} of task ${r.id}: the process spec has no args`);
    }
    const stdio: ProcessStdio = { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, terminal: r.terminal };
    const p = task.addExec(r.execId, stdio);
    p.spec = spec;
    this.#tasks.publish('/tasks/exec-added', 'containerd.events.TaskExecAdded', { containerId: task.id, execId: r.execId });
    return {};
  }

  async resizePty(r: ResizePtyRequest, ctx: CallContext): Promise<Empty> {
    const task = this.#tasks.get(r.id);
    const p = task.process(r.execId);
    if (p.state === 'stopped') throw new TtrpcError(GrpcCode.FAILED_PRECONDITION, `${p.label}: cannot resize a stopped process`);
    // Its end is known but not told yet (output still draining): for containerd it runs, and
    // its terminal is gone: nothing to resize (`ctr run -t` resizes right after Start).
    if (p.exiting) return {};
    const size = { rows: r.height, cols: r.width };
    try {
      if (p.isInit) await task.init.handle!.container.resizeTty(size, callOptions(ctx));
      else {
        const proc = p.handle?.process;
        if (!proc) throw new TtrpcError(GrpcCode.FAILED_PRECONDITION, `${p.label}: not started`);
        await proc.resizeTty(size, callOptions(ctx));
      }
    } catch (error) {
      // It ended while the resize was on its way.
      if (p.finished) return {};
      throw error;
    }
    return {};
  }

  async closeIO(r: CloseIORequest): Promise<Empty> {
    const task = this.#tasks.get(r.id);
    const p = task.process(r.execId);
    if (r.stdin) p.handle?.wiring?.closeStdin();
    return {};
  }

  async kill(r: KillRequest, ctx: CallContext): Promise<Empty> {
    const task = this.#tasks.get(r.id);
    const p = task.process(r.execId);
    p.checkKill();
    try {
      if (p.isInit) await task.init.handle!.container.kill(r.signal, { all: r.all, ...callOptions(ctx) });
      else await p.handle!.process!.kill(r.signal, callOptions(ctx));
    } catch (error) {
      // It ended between the check and the signal: before its exit reached us, the agent says so.
      if (p.finished || p.deleted || endedInGuest(error)) throw new TtrpcError(GrpcCode.NOT_FOUND, `${p.label}: process already finished`, { cause: error });
      throw error;
    }
    return {};
  }

  async wait(r: WaitRequest, ctx: CallContext): Promise<WaitResponse> {
    const p = this.#tasks.get(r.id).process(r.execId);
    const exit = await p.wait(ctx.signal);
    return { exitStatus: exit.exitStatus, exitedAt: exit.exitedAt };
  }

  async state(r: StateRequest): Promise<StateResponse> {
    const task = this.#tasks.get(r.id);
    const p = task.process(r.execId);
    return {
      id: p.id,
      bundle: task.bundle,
      pid: p.pid,
      // While its exit is being reported it still counts as running (its output is not all out).
      status: STATUS[p.state] ?? TaskStatus.UNKNOWN,
      stdin: p.stdio.stdin,
      stdout: p.stdio.stdout,
      stderr: p.stdio.stderr,
      terminal: p.stdio.terminal,
      exitStatus: p.state === 'stopped' ? (p.exit?.exitStatus ?? 0) : 0,
      exitedAt: p.state === 'stopped' ? (p.exit?.exitedAt ?? null) : null,
      execId: r.execId,
    };
  }

  async pids(r: PidsRequest, ctx: CallContext): Promise<PidsResponse> {
    const task = this.#tasks.get(r.id);
    const init = task.init;
    if (init.state !== 'running' && init.state !== 'paused') return { processes: [] };
    if (init.finished) return { processes: [] };
    const inspection = await init.handle!.container.inspect(callOptions(ctx));
    const processes = [{ pid: inspection.pid }];
    for (const exec of inspection.execs) if (exec.status === 'running' || exec.status === 'paused') processes.push({ pid: exec.pid });
    return { processes };
  }

  async pause(r: PauseRequest, ctx: CallContext): Promise<Empty> {
    const task = this.#tasks.get(r.id);
    const init = task.init;
    if (init.finished) throw new TtrpcError(GrpcCode.FAILED_PRECONDITION, `${init.label}: cannot pause a stopped container`);
    if (init.state !== 'running') throw new TtrpcError(GrpcCode.FAILED_PRECONDITION, `${init.label}: cannot pause a ${init.state} container`);
    await init.handle!.container.pause(callOptions(ctx));
    if (init.state === 'running') init.state = 'paused';
    this.#tasks.publish('/tasks/paused', 'containerd.events.TaskPaused', { containerId: task.id });
    return {};
  }

  async resume(r: ResumeRequest, ctx: CallContext): Promise<Empty> {
    const task = this.#tasks.get(r.id);
    const init = task.init;
    if (init.state !== 'paused' || init.finished) throw new TtrpcError(GrpcCode.FAILED_PRECONDITION, `${init.label}: cannot resume a ${init.finished ? 'stopped' : init.state} container`);
    await init.handle!.container.resume(callOptions(ctx));
    if (init.state === 'paused') init.state = 'running';
    this.#tasks.publish('/tasks/resumed', 'containerd.events.TaskResumed', { containerId: task.id });
    return {};
  }

  async update(r: UpdateTaskRequest, ctx: CallContext): Promise<Empty> {
    const task = this.#tasks.get(r.id);
    const init = task.init;
    if (init.finished) throw new TtrpcError(GrpcCode.FAILED_PRECONDITION, `${init.label}: cannot update a stopped container`);
    if (r.resources === null) throw new TtrpcError(GrpcCode.INVALID_ARGUMENT, `update of task ${r.id}: no resources`);
    const resources = decodeAny<Record<string, unknown>>(r.resources);
    if (typeof resources !== 'object' || resources === null || Array.isArray(resources)) {
      throw new TtrpcError(GrpcCode.INVALID_ARGUMENT, `update of task ${r.id}: the resources are not a LinuxResources object`);
    }
    const known = knownResources(resources);
    if (Object.keys(known).length === 0) return {};
    await init.handle!.container.update(known, callOptions(ctx));
    return {};
  }

  async stats(r: StatsRequest, ctx: CallContext): Promise<StatsResponse> {
    const task = this.#tasks.get(r.id);
    if (task.init.finished) throw new TtrpcError(GrpcCode.NOT_FOUND, `${task.init.label}: stopped: it has no cgroup`);
    const stats = await task.init.handle!.container.stats(callOptions(ctx));
    return { stats: this.#deps.metricsAny(stats) };
  }

  async connect(r: ConnectRequest): Promise<ConnectResponse> {
    const pid = this.#tasks.has(r.id) ? this.#tasks.get(r.id).init.pid : 0;
    return { shimPid: process.pid, taskPid: pid, version: '' };
  }

  async shutdown(_r: ShutdownRequest): Promise<Empty> {
    if (this.#tasks.size > 0) return {};
    this.#log.info('shutdown asked and no task is left');
    // After this answer is on its way.
    setImmediate(() => this.#onIdle());
    return {};
  }

  async checkpoint(r: CheckpointTaskRequest): Promise<Empty> {
    throw new TtrpcError(GrpcCode.UNIMPLEMENTED, `checkpoint of task ${r.id}: not supported by vmpod`);
  }

  /**
   * The server goes away (a signal): what the processes wrote so far is passed on and their
   * stdio closed (bounded: 5 s). Their VMs are left as they are: containerd runs the shim's
   * `delete` for tasks whose server is gone.
   */
  async close(): Promise<void> {
    const closing = this.#tasks.all().flatMap((task) => [task.init, ...task.execs.values()].map((p) => p.handle?.wiring?.close().catch(() => undefined)));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(closing), new Promise<void>((resolve) => (timer = setTimeout(resolve, 5000)))]);
    clearTimeout(timer);
  }
}

async function readSpec(bundle: string, id: string): Promise<RuntimeSpec> {
  let text: string;
  try {
    text = await fs.readFile(path.join(bundle, 'config.json'), 'utf8');
  } catch (error) {
    throw new TtrpcError(GrpcCode.INVALID_ARGUMENT, `task ${id}: cannot read ${path.join(bundle, 'config.json')}: ${errorText(error)}`, { cause: error });
  }
  let spec: unknown;
  try {
    spec = JSON.parse(text);
  } catch (error) {
    throw new TtrpcError(GrpcCode.INVALID_ARGUMENT, `task ${id}: config.json is not valid JSON: ${errorText(error)}`, { cause: error });
  }
  if (typeof spec !== 'object' || spec === null || Array.isArray(spec)) throw new TtrpcError(GrpcCode.INVALID_ARGUMENT, `task ${id}: config.json is not an object`);
  return spec as RuntimeSpec;
}

/** The agent's answer to a signal for a process that has exited (containerd's CRI ignores NOT_FOUND when it stops a container). */
function endedInGuest(error: unknown): boolean {
  if (!(error instanceof AgentError) || error.method !== 'Signal') return false;
  return error.errnoName === 'ESRCH' || (error.agentCode === 'FAILED_PRECONDITION' && / is not running$/u.test(error.message));
}

function userOf(user: NonNullable<SpecProcess['user']>): { uid: number; gid: number; additionalGids?: number[] } {
  const out: { uid: number; gid: number; additionalGids?: number[] } = { uid: Number(user.uid ?? 0), gid: Number(user.gid ?? 0) };
  if (Array.isArray(user.additionalGids) && user.additionalGids.length > 0) out.additionalGids = user.additionalGids.map(Number);
  return out;
}
