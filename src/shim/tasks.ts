/**
 * The shim's bookkeeping of tasks and their processes: each task's init (the container) and its
 * execs by exec id, the state of each (created → running ⇄ paused → stopped), its exit status
 * and time, its waiters, and the rules of containerd's Task API for each state (which call is
 * refused with which gRPC code, as containerd's own runc shim answers, so that containerd's
 * errdefs checks see NOT_FOUND, FAILED_PRECONDITION... where they expect them).
 *
 * Exits are reported in the order containerd expects: a process's exit is known first
 * (`exiting`), its output drained, then it becomes `stopped` and its `/tasks/exit` goes out,
 * after its start event (a start under way is waited for), after `/tasks/oom` when the kernel
 * killed it for memory, and, for a task's init, after the exits of its started execs (the pid
 * namespace takes them down with it).
 *
 * @module
 */
import { GrpcCode, TtrpcError } from './ttrpc/status.js';
import type { ShimLog } from './log.js';

/** The state of a task or exec, as the Task API reports it. */
export type ProcessState = 'created' | 'running' | 'paused' | 'stopped';

/** The stdio a process was created with (containerd's fifo paths or URIs, '' for none). */
export interface ProcessStdio {
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
}

/** How a process ended. */
export interface ExitRecord {
  exitStatus: number;
  exitedAt: Date;
}

/** What the tasks publish (the interface of the server's EventPublisher they use). */
export interface EventSink {
  publish(topic: string, typeName: string, event: object): void;
}

/** The exit status reported for the processes of a VM that is gone (and after a lost agent). */
export const VM_GONE_STATUS = 255;

interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** Resolves when `promise` settles or after `ms`, whichever is first; never rejects. */
async function bounded(promise: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([promise.then(() => undefined, () => undefined), new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** One process of the Task API: a task's init (execId '') or one of its execs. `H` is what runs it (the library's Container or Process). */
export class TaskProcess<H = unknown> {
  state: ProcessState = 'created';
  /** The exit status is known and the output is being drained: no longer signalable, not yet stopped. */
  exiting = false;
  /** Removed by Delete (its own, or its task's): nothing more is reported for it. */
  deleted = false;
  exit: ExitRecord | undefined;
  /** The pid reported to containerd (0 until it exists). */
  pid = 0;
  /** What runs it, once it exists. */
  handle: H | undefined;
  /** The runtime-spec Process of an exec (from Exec, used at Start). */
  spec: unknown;
  #waiters = new Set<(exit: ExitRecord) => void>();
  #gate: Promise<void> = Promise.resolve();
  readonly #done = deferred<void>();

  constructor(
    readonly containerId: string,
    /** '' for the task's init. */
    readonly execId: string,
    readonly stdio: ProcessStdio,
  ) {}

  /** The process's id in events and State: the exec id, or the container id for the init. */
  get id(): string {
    return this.execId === '' ? this.containerId : this.execId;
  }

  get isInit(): boolean {
    return this.execId === '';
  }

  /** For messages: `task "ID"` or `exec "E" of task "ID"`. */
  get label(): string {
    return this.isInit ? `task "${this.containerId}"` : `exec "${this.execId}" of task "${this.containerId}"`;
  }

  /** Whether it ended (or its end is known and being reported). */
  get finished(): boolean {
    return this.state === 'stopped' || this.exiting;
  }

  /** Resolves once the process's exit was reported (or it was deleted without one). */
  get done(): Promise<void> {
    return this.#done.promise;
  }

  /**
   * Runs `fn` (a start and the publication of its event) so that no exit of this process is
   * published before it ends: a process that exits at once still has its start event first.
   */
  async starting<T>(fn: () => Promise<T>): Promise<T> {
    const gate = deferred<void>();
    const previous = this.#gate;
    this.#gate = previous.then(() => gate.promise);
    try {
      return await fn();
    } finally {
      gate.resolve();
    }
  }

  /** Resolves when the starts under way (see {@link starting}) have ended. */
  afterStarts(): Promise<void> {
    return this.#gate;
  }

  /** Resolves with the exit once reported (at once when it already was); `signal` gives up waiting. */
  wait(signal?: AbortSignal): Promise<ExitRecord> {
    if (this.exit !== undefined && (this.state === 'stopped' || this.deleted)) return Promise.resolve(this.exit);
    return new Promise<ExitRecord>((resolve, reject) => {
      const waiter = (exit: ExitRecord): void => {
        signal?.removeEventListener('abort', onAbort);
        resolve(exit);
      };
      const onAbort = (): void => {
        this.#waiters.delete(waiter);
        reject(new TtrpcError(GrpcCode.CANCELLED, `wait for ${this.label} was cancelled`));
      };
      if (signal?.aborted) {
        onAbort();
        return;
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#waiters.add(waiter);
    });
  }

  /** Records the exit and wakes every waiter. */
  settle(exit: ExitRecord): void {
    this.exit = exit;
    const waiters = [...this.#waiters];
    this.#waiters.clear();
    for (const waiter of waiters) waiter(exit);
    this.#done.resolve();
  }

  /** Refuses a Start the state does not allow. */
  checkStart(): void {
    if (this.deleted) throw notFound(`${this.label} does not exist`);
    if (this.finished) throw new TtrpcError(GrpcCode.FAILED_PRECONDITION, `${this.label}: cannot start a stopped process`);
    if (this.state !== 'created') throw new TtrpcError(GrpcCode.FAILED_PRECONDITION, `${this.label}: cannot start a running process`);
  }

  /** Refuses a Delete the state does not allow (a running or paused process, or one whose exit is still being reported). */
  checkDelete(): void {
    if (this.state === 'running' || this.state === 'paused' || this.exiting) {
      throw new TtrpcError(GrpcCode.FAILED_PRECONDITION, `${this.label}: cannot delete a ${this.state === 'paused' ? 'paused' : 'running'} process`);
    }
  }

  /** Refuses a Kill of an exec not started yet (FAILED_PRECONDITION) or of a process that ended (NOT_FOUND, as runc's shim). */
  checkKill(): void {
    if (!this.isInit && this.state === 'created' && !this.finished) throw new TtrpcError(GrpcCode.FAILED_PRECONDITION, `${this.label}: process not created`);
    if (this.finished) throw notFound(`${this.label}: process already finished`);
  }
}

function notFound(message: string): TtrpcError {
  return new TtrpcError(GrpcCode.NOT_FOUND, message);
}

/** A task: the container (its init), its execs, its bundle and pod. */
export class Task<H = unknown> {
  readonly init: TaskProcess<H>;
  readonly execs = new Map<string, TaskProcess<H>>();
  /** Removed by Delete: nothing more is reported for it. */
  deleted = false;

  constructor(
    readonly id: string,
    readonly bundle: string,
    /** The pod (the VM) it runs in. */
    readonly podId: string,
    stdio: ProcessStdio,
  ) {
    this.init = new TaskProcess<H>(id, '', stdio);
  }

  /** The init ('' or the task's own id) or an exec; NOT_FOUND when there is no such exec. */
  process(execId: string): TaskProcess<H> {
    if (execId === '') return this.init;
    const exec = this.execs.get(execId);
    if (exec === undefined) throw notFound(`process does not exist ${execId}`);
    return exec;
  }

  /** Adds an exec (checked with {@link checkExec} first), created, not started. */
  addExec(execId: string, stdio: ProcessStdio): TaskProcess<H> {
    const exec = new TaskProcess<H>(this.id, execId, stdio);
    this.execs.set(execId, exec);
    return exec;
  }

  /** Refuses the Start of an exec while the init does not run (it ended, or is paused). */
  checkExecStart(): void {
    const init = this.init;
    if (init.finished || init.state !== 'running') {
      throw new TtrpcError(GrpcCode.FAILED_PRECONDITION, `${init.label}: cannot start an exec in a ${init.finished ? 'stopped' : init.state} container`);
    }
  }

  /** Refuses an exec in a task whose init is not running (paused, stopped or not started yet). */
  checkExec(execId: string): void {
    if (execId === '') throw new TtrpcError(GrpcCode.INVALID_ARGUMENT, `exec of task "${this.id}": an exec id is required`);
    if (this.execs.has(execId)) throw new TtrpcError(GrpcCode.ALREADY_EXISTS, `id ${execId}`);
    const init = this.init;
    if (init.finished) throw new TtrpcError(GrpcCode.FAILED_PRECONDITION, `${init.label}: cannot exec in a stopped state`);
    if (init.state !== 'running') throw new TtrpcError(GrpcCode.FAILED_PRECONDITION, `${init.label}: cannot exec in a ${init.state} state`);
  }
}

/** What reporting an exit takes. */
export interface ExitReport {
  /** The exit code (128 + N for a signal; {@link VM_GONE_STATUS} when the VM is gone). */
  exitCode: number;
  /** The kernel killed it for memory: `/tasks/oom` goes out before its exit. */
  oomKilled?: boolean;
  /** Waits until its output reached its destinations (ProcessIo.close()). */
  drain(): Promise<void>;
}

/** Options of {@link Tasks}. */
export interface TasksOptions {
  events: EventSink;
  log: ShimLog;
  /** The pid reported for the processes of a task (the shim reports its VM's QEMU). */
  pidOf?: (task: Task) => number;
  /** How long an exit waits for its output to drain (default 15 s) before it is reported anyway. */
  drainTimeoutMs?: number;
  /** How long an init's exit waits for the exits of its execs (default 10 s). */
  execExitTimeoutMs?: number;
}

/** Every task of the server, and the rules that order their exits and events. */
export class Tasks<H = unknown> {
  readonly #tasks = new Map<string, Task<H>>();
  /** Ids reserved by a Create under way (so Shutdown does not end the server under it). */
  readonly #reserved = new Set<string>();
  readonly #events: EventSink;
  readonly #log: ShimLog;
  readonly #drainTimeoutMs: number;
  readonly #execExitTimeoutMs: number;

  constructor(options: TasksOptions) {
    this.#events = options.events;
    this.#log = options.log;
    this.#drainTimeoutMs = options.drainTimeoutMs ?? 15_000;
    this.#execExitTimeoutMs = options.execExitTimeoutMs ?? 10_000;
  }

  /** How many tasks exist or are being created. */
  get size(): number {
    return this.#tasks.size + this.#reserved.size;
  }

  /** Every task. */
  all(): Task<H>[] {
    return [...this.#tasks.values()];
  }

  /** The tasks of one pod. */
  ofPod(podId: string): Task<H>[] {
    return this.all().filter((t) => t.podId === podId);
  }

  /** The task `id`; NOT_FOUND when there is none. */
  get(id: string): Task<H> {
    const task = this.#tasks.get(id);
    if (task === undefined) throw notFound(`task ${id} not found`);
    return task;
  }

  has(id: string): boolean {
    return this.#tasks.has(id);
  }

  /** Reserves `id` for a Create; ALREADY_EXISTS when it exists or is being created. Undo with {@link unreserve}. */
  reserve(id: string): void {
    if (this.#tasks.has(id) || this.#reserved.has(id)) throw new TtrpcError(GrpcCode.ALREADY_EXISTS, `task ${id} already exists`);
    this.#reserved.add(id);
  }

  unreserve(id: string): void {
    this.#reserved.delete(id);
  }

  /** Adds a created task (its id reserved before). */
  add(task: Task<H>): void {
    this.#reserved.delete(task.id);
    this.#tasks.set(task.id, task);
  }

  /**
   * Forgets a task (Delete): it and its execs are marked deleted, their waiters get `exit`, and
   * nothing more is reported for them.
   */
  remove(task: Task<H>, exit: ExitRecord): void {
    task.deleted = true;
    this.#tasks.delete(task.id);
    for (const p of [...task.execs.values(), task.init]) {
      p.deleted = true;
      if (p.state !== 'stopped') p.state = 'stopped';
      p.settle(p.exit ?? exit);
    }
  }

  /** Forgets an exec (Delete with its exec id). */
  removeExec(task: Task<H>, exec: TaskProcess<H>, exit: ExitRecord): void {
    exec.deleted = true;
    task.execs.delete(exec.execId);
    exec.settle(exec.exit ?? exit);
  }

  /** Publishes an event, never throwing. */
  publish(topic: string, typeName: string, event: object): void {
    try {
      this.#events.publish(topic, typeName, event);
    } catch (error) {
      this.#log.error(`publishing ${topic}: ${(error as Error).message}`);
    }
  }

  /**
   * Reports that process `p` of `task` ended: once (the first report wins; a deleted process is
   * not reported), after its output was drained, after its start event, after its execs' exits
   * when it is the init; then `/tasks/oom` (if so) and `/tasks/exit`, then its waiters. Resolves
   * when it was reported.
   */
  async reportExit(task: Task<H>, p: TaskProcess<H>, report: ExitReport, pid: number): Promise<void> {
    if (p.finished || p.deleted) return;
    p.exiting = true;
    const exitedAt = new Date();
    await bounded(
      report.drain().catch((error: unknown) => this.#log.warn(`${p.label}: draining its output: ${(error as Error).message}`)),
      this.#drainTimeoutMs,
    );
    await p.afterStarts();
    if (p.isInit) {
      const execs = [...task.execs.values()].filter((e) => e.state !== 'created' || e.exiting);
      await bounded(Promise.all(execs.map((e) => e.done)), this.#execExitTimeoutMs);
    }
    p.exiting = false;
    if (p.deleted) return;
    p.state = 'stopped';
    const exit: ExitRecord = { exitStatus: report.exitCode, exitedAt };
    if (report.oomKilled === true) this.publish('/tasks/oom', 'containerd.events.TaskOOM', { containerId: task.id });
    this.publish('/tasks/exit', 'containerd.events.TaskExit', { containerId: task.id, id: p.id, pid, exitStatus: exit.exitStatus, exitedAt: exit.exitedAt });
    this.#log.info(`${p.label} exited with status ${exit.exitStatus}`);
    p.settle(exit);
  }
}
