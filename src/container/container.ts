/**
 * A container in a sandbox (a process tree in the VM, with its own namespaces, rootfs and
 * cgroup), and the processes that run in it. Thin objects over the agent client: the agent in
 * the guest owns the container, so any process that attached to the sandbox can wait for it,
 * signal it or exec into it.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import type { Readable, Writable } from 'node:stream';
import { EventEmitter } from 'eventemitter3';
import type { AgentClient } from '../agent/client.js';
import type { ContainerStats, ExitStatus, OciProcess } from '../agent/messages.js';
import { checkResources, type ContainerResources } from '../agent/resources.js';
import { assertTransition, stateError, type ContainerState } from '../sandbox/state-machine.js';
import { InvalidArgumentError } from '../errors.js';
import * as validate from '../validate.js';
import { DEFAULT_PATH, checkOverrides, execFailure, execStateFailure, type ProcessOverrides } from './spec.js';
import type { CallOptions } from '../options.js';
import type { ContainerLogReader, LogOptions } from './log-file.js';
import type { ContainerInspection } from '../sandbox/inspect.js';

export type { ContainerResources, ContainerStats, ExitStatus };

/** @deprecated The same as {@link CallOptions}, vmpod's one options type of calls. */
export type SignalOptions = CallOptions;

/** Which stdio streams to open. With a terminal there is one stream: stdout (stderr goes to it too). */
export interface StdioOptions {
  /** Open a stdin stream (default false: stdin is /dev/null). */
  stdin?: boolean;
  /** Open a stdout stream (default true). */
  stdout?: boolean;
  /** Open a stderr stream (default true, false with a terminal). */
  stderr?: boolean;
}

/** What a {@link Container} or {@link Process} needs from its sandbox. @internal */
export interface ContainerHost {
  /** This process's agent connection (made on demand, with a deadline). */
  agent(options?: CallOptions): Promise<AgentClient>;
  /** This process's agent connection if it has one now (background watches never make one). */
  currentAgent(): AgentClient | undefined;
  /** `sandbox "ID"`, for messages. */
  readonly label: string;
  /** Called after the agent deleted a container: releases its host-side mounts. */
  releaseContainer(id: string): Promise<void>;
  /** Called when a container's init exited. */
  containerExited(id: string, status: ExitStatus): void;
  /** The log of container `id` (see {@link Container.logs}). */
  containerLogs(id: string, options?: LogOptions): ContainerLogReader;
  /** What `container.inspect()` reports of container `id`. */
  inspectContainer(id: string, options?: CallOptions): Promise<ContainerInspection>;
  /** Called once a container's init was started (the sandbox records it for watchers); never rejects. */
  containerStarted?(id: string): Promise<void>;
}

/** Options of {@link Container.exec}. */
export interface ExecOptions extends ProcessOverrides, CallOptions {
  /** Process id within the container (default random). */
  id?: string;
  /** Which stdio streams to open (default: stdout and stderr). */
  stdio?: StdioOptions;
}

/** Events of a {@link Container}. */
export interface ContainerEvents {
  /** Its init process exited (emitted once). */
  exit: (status: ExitStatus) => void;
}

/** A process in a container: the container's init or an exec'd one. */
export class Process {
  /** Its stdin (null unless asked for); `end()` closes the process's stdin. */
  readonly stdin: Writable | null;
  /** Its stdout (with a terminal: everything the terminal shows). */
  readonly stdout: Readable | null;
  /** Its stderr (null with a terminal). */
  readonly stderr: Readable | null;
  #exit: Promise<ExitStatus> | undefined;

  /** @internal */
  constructor(
    private readonly host: ContainerHost,
    /** The container it runs in. */
    readonly containerId: string,
    /** Its exec id; undefined for the container's init. */
    readonly execId: string | undefined,
    /** Its pid in the guest. */
    readonly pid: number,
    stdio: { stdin: Writable | null; stdout: Readable | null; stderr: Readable | null },
  ) {
    this.stdin = stdio.stdin;
    this.stdout = stdio.stdout;
    this.stderr = stdio.stderr;
    // A stream nobody reads must not crash the program when the sandbox goes away: readers
    // still see the error through 'error' listeners, finished() or for-await.
    for (const stream of [this.stdin, this.stdout, this.stderr]) stream?.on('error', ignore);
  }

  #target(): { execId?: string } {
    return this.execId === undefined ? {} : { execId: this.execId };
  }

  /** Resolves with the exit status once the process has exited (like `wait(2)`). */
  wait(options: CallOptions = {}): Promise<ExitStatus> {
    if (options.signal) return this.host.agent(options).then((agent) => agent.wait(this.containerId, { ...this.#target(), signal: options.signal }));
    this.#exit ??= this.host.agent().then((agent) => agent.wait(this.containerId, this.#target()));
    return this.#exit;
  }

  /** Sends a signal (default SIGTERM); `kill -SIGNAL PID`. */
  async kill(signal: NodeJS.Signals | number = 'SIGTERM', options: CallOptions = {}): Promise<void> {
    await (await this.host.agent()).signal(this.containerId, signal, { ...this.#target(), ...options });
  }

  /** Sets the size of its terminal (`stty rows R cols C`); only for processes with a terminal. */
  async resizeTty(size: { rows: number; cols: number }, options: CallOptions = {}): Promise<void> {
    await (await this.host.agent()).resizeTty(this.containerId, size, { ...this.#target(), ...options });
  }
}

/**
 * A container in a sandbox. Get one from `sandbox.createContainer()` or `sandbox.container(id)`.
 *
 * @example
 * ```ts
 * await using web = await sandbox.createContainer({
 *   bundle: '/srv/bundles/web',                // or rootfs: DIR, or neither: builtin busybox
 *   process: { args: ['httpd', '-f', '-p', '8080'] },
 * });
 * web.stderr!.pipe(process.stderr);            // open before start: nothing is missed
 * await web.start();
 * const probe = await web.exec({ args: ['wget', '-qO-', 'http://127.0.0.1:8080/'] });
 * probe.stdout!.pipe(process.stdout);
 * console.log(await probe.wait(), await web.inspect());  // { exitCode, signal, oomKilled }, state, stats
 * await web.kill('SIGTERM');
 * await web.wait();
 * ```
 */
export class Container extends EventEmitter<ContainerEvents> {
  #state: ContainerState;
  #init: Process | undefined;
  #exitStatus: ExitStatus | undefined;
  #watching = false;

  /** @internal */
  constructor(
    private readonly host: ContainerHost,
    /** The container's id, unique in its sandbox. */
    readonly id: string,
    state: ContainerState,
    init: Process | undefined,
  ) {
    super();
    this.#state = state;
    this.#init = init;
    if (state === 'running' || state === 'paused') this.#watchExit();
  }

  /**
   * `created`, `running`, `paused` ({@link Container.pause}), `stopped` or `deleted`, as this
   * object last saw it.
   */
  get state(): ContainerState {
    return this.#state;
  }

  /** The container's init process (undefined for a container attached after it stopped). */
  get init(): Process | undefined {
    return this.#init;
  }

  /** Stdin of the init process, if it was asked for. */
  get stdin(): Writable | null {
    return this.#init?.stdin ?? null;
  }

  /** Stdout of the init process. */
  get stdout(): Readable | null {
    return this.#init?.stdout ?? null;
  }

  /** Stderr of the init process. */
  get stderr(): Readable | null {
    return this.#init?.stderr ?? null;
  }

  /** The init's exit status, once it is known. */
  get exitStatus(): ExitStatus | undefined {
    return this.#exitStatus;
  }

  #label(): string {
    return `container "${this.id}" in ${this.host.label}`;
  }

  /** Starts the init process (`runc start`). */
  async start(options: CallOptions = {}): Promise<void> {
    if (this.#state === 'paused') throw stateError('container', this.#label(), 'paused', 'running', { action: 'start', hint: 'it was started already; resume() thaws it' });
    assertTransition('container', this.#label(), this.#state, 'running');
    const agent = await this.host.agent(options);
    // A command that cannot be executed is an ExecFailedError (the agent's answer is its cause).
    await agent.startContainer(this.id, options).catch((error: unknown) => {
      throw execFailure(error, this.#label()) ?? error;
    });
    this.#state = 'running';
    await this.host.containerStarted?.(this.id);
    this.#watchExit(agent);
  }

  /** Watches the init's exit on `agent` (the connection in hand: a detached sandbox is never reconnected for it). */
  #watchExit(agent = this.host.currentAgent()): void {
    if (this.#watching || !agent) return;
    this.#watching = true;
    agent.wait(this.id).then(
      (status) => {
        this.#exitStatus = status;
        if (this.#state === 'running' || this.#state === 'paused' || this.#state === 'created') this.#state = 'stopped';
        this.host.containerExited(this.id, status);
        this.emit('exit', status);
      },
      // The connection ended (sandbox stopped, process detached): wait() callers get the error.
      () => undefined,
    );
  }

  /** Resolves with the init's exit status once it has exited. */
  async wait(options: CallOptions = {}): Promise<ExitStatus> {
    if (this.#exitStatus) return this.#exitStatus;
    const status = await (await this.host.agent()).wait(this.id, options);
    this.#exitStatus = status;
    if (this.#state === 'running' || this.#state === 'paused') this.#state = 'stopped';
    return status;
  }

  /**
   * Pauses the container: every process in it is frozen (its cgroup's `cgroup.freeze` in the
   * guest) while the rest of the sandbox runs on; `runc pause`, `docker pause`. Resolves once the
   * guest kernel reports them all frozen; one that does not freeze within `freezeTimeoutMs`
   * (default 10000) is thawed again and the call fails. While paused, signals wait for
   * {@link Container.resume} (SIGKILL alone acts at once: `kill('SIGKILL')` ends a paused
   * container), {@link Container.exec} is refused, {@link Container.update} and stats work. Not
   * the same as `sandbox.pause()`, which stops the whole VM (every container, the agent too).
   * Needs a guest with cgroups (agent feature `pause-container`).
   */
  async pause(options: CallOptions & { freezeTimeoutMs?: number } = {}): Promise<void> {
    if (this.#state !== 'running') {
      throw stateError('container', this.#label(), this.#state, 'running', this.#state === 'paused' ? { action: 'pause', hint: 'it is paused already' } : { action: 'pause' });
    }
    const agent = await this.host.agent(options);
    await agent.pauseContainer(this.id, options);
    if (this.#state === 'running') this.#state = 'paused';
  }

  /** Thaws a paused container (`runc resume`, `docker unpause`); resolves once it runs again. */
  async resume(options: CallOptions & { freezeTimeoutMs?: number } = {}): Promise<void> {
    if (this.#state !== 'paused') throw stateError('container', this.#label(), this.#state, 'paused', { action: 'resume' });
    const agent = await this.host.agent(options);
    await agent.resumeContainer(this.id, options);
    if (this.#state === 'paused') this.#state = 'running';
  }

  /**
   * Changes the limits of a created, running or paused container, in its cgroup in the guest:
   * the `runc update` of OCI `linux.resources` fields (memory limit, reservation and swap; cpu
   * shares, quota, period, cpus, mems; pids limit; block I/O weight). Checked before anything is
   * sent (an {@link InvalidArgumentError} names the field: unknown fields, values out of range,
   * an empty update); the guest refuses a controller its kernel lacks. Fields left out keep
   * their values.
   *
   * ```ts
   * // runc update --memory 268435456 --cpu-quota 50000 --cpu-period 100000 --pids-limit 64 ID
   * await container.update({ memory: { limit: 256 * 2 ** 20 }, cpu: { quota: 50_000, period: 100_000 }, pids: { limit: 64 } });
   * ```
   */
  async update(resources: ContainerResources, options: CallOptions = {}): Promise<void> {
    const checked = checkResources(resources);
    if (this.#state === 'stopped' || this.#state === 'deleted') {
      throw stateError('container', this.#label(), this.#state, 'running', { action: 'update' });
    }
    await (await this.host.agent(options)).updateContainer(this.id, checked, options);
  }

  /**
   * Sends a signal (default SIGTERM) to the init process, or with `all` to every process of
   * the container (`runc kill [--all] ID SIGNAL`).
   */
  async kill(signal: NodeJS.Signals | number = 'SIGTERM', options: CallOptions & { all?: boolean } = {}): Promise<void> {
    await (await this.host.agent()).signal(this.id, signal, options);
  }

  /** Runs another process in the running container (`runc exec`, `docker exec`). */
  async exec(options: ExecOptions): Promise<Process> {
    if (this.#state !== 'running') throw stateError('container', this.#label(), this.#state, 'running', { action: 'exec' });
    checkOverrides(options, 'exec');
    if (!options.args) throw new InvalidArgumentError('exec.args', 'give the command to run');
    const execId = options.id === undefined ? `exec-${randomBytes(4).toString('hex')}` : validate.id(options.id, 'exec.id');
    const terminal = options.terminal ?? false;
    const process: OciProcess = {
      args: options.args,
      env: [DEFAULT_PATH, terminal ? 'TERM=xterm' : 'TERM=dumb', ...(options.env ?? [])],
      cwd: options.cwd ?? '/',
      terminal,
    };
    if (options.user) process.user = options.user;
    const want = normaliseStdio(options.stdio, terminal);
    const { pid } = await (await this.host.agent()).exec({ containerId: this.id, execId, process, stdio: want }, signalOnly(options)).catch((error: unknown) => {
      throw execFailure(error, this.#label()) ?? execStateFailure(error, this.#label()) ?? error;
    });
    const stdio = await (await this.host.agent()).openStdio(this.id, { execId, ...want }, signalOnly(options));
    return new Process(this.host, this.id, execId, pid, stdio);
  }

  /** Sets the init's terminal size (`stty rows R cols C`). */
  async resizeTty(size: { rows: number; cols: number }, options: CallOptions = {}): Promise<void> {
    await (await this.host.agent()).resizeTty(this.id, size, options);
  }

  /**
   * The container's output as recorded in its log (docs/logs.md), from any process and in any
   * state of the sandbox until the container or the sandbox is deleted: a Readable of the
   * lines' bytes, stdout and stderr in the order they were received (`streams` picks one).
   * `tail` keeps the last lines, `since` the lines received from then on, `timestamps` starts
   * each line with its time; `follow` goes on with what the container writes until its output
   * ends (`docker logs -f`). `sandbox.logs(id, options, true)` gives the lines as objects with
   * their stream and time.
   *
   * ```ts
   * const c = await (await Sandbox.attach('web')).container('web');
   * c.logs({ tail: 10, follow: true }).pipe(process.stdout);
   * ```
   */
  logs(options: LogOptions = {}): ContainerLogReader {
    return this.host.containerLogs(this.id, options);
  }

  /** CPU, memory and pids of the container's cgroup in the guest. */
  async stats(options: CallOptions = {}): Promise<ContainerStats> {
    return (await this.host.agent()).stats(this.id, options);
  }

  /**
   * What the agent knows of the container, as plain JSON: state, init pid, bundle and rootfs in
   * the guest, creation time, exit status, exec'd processes, and its cgroup's stats while it runs.
   */
  async inspect(options: CallOptions = {}): Promise<ContainerInspection> {
    return this.host.inspectContainer(this.id, options);
  }

  /**
   * Removes the container from the guest and releases its host-side mounts. A running
   * container needs `force` (its processes are killed first), like `runc delete --force`.
   */
  async delete(options: CallOptions & { force?: boolean } = {}): Promise<void> {
    if (this.#state === 'deleted') return;
    if ((this.#state === 'running' || this.#state === 'paused') && !options.force) assertTransition('container', this.#label(), this.#state, 'deleted');
    await (await this.host.agent()).deleteContainer(this.id, options);
    this.#state = 'deleted';
    await this.host.releaseContainer(this.id);
  }

  /**
   * `await using c = await sandbox.createContainer(...)`: the container is deleted (its
   * processes killed) when the scope ends, unless it already was; `runc delete --force`.
   */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.delete({ force: true });
  }
}

/** The stdio to open for a process: defaults, and what a terminal allows. @internal */
export function normaliseStdio(stdio: StdioOptions | undefined, terminal: boolean): Required<StdioOptions> {
  return {
    stdin: stdio?.stdin ?? false,
    stdout: stdio?.stdout ?? true,
    stderr: terminal ? false : (stdio?.stderr ?? true),
  };
}

function ignore(): void {}

function signalOnly(options: CallOptions): CallOptions {
  return options.signal ? { signal: options.signal } : {};
}
