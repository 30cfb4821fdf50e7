/**
 * Running a container to completion, as one call: `sandbox.run(...)` in a running sandbox, and
 * `Sandbox.run(config, ...)` in a sandbox of its own, made for the call and deleted after it
 * (dockerode's `docker.run`, `docker run --rm`).
 *
 * @module
 */
import type { Readable } from 'node:stream';
import type { ExitStatus } from '../agent/messages.js';
import type { Container } from '../container/container.js';
import { checkOverrides, type ProcessOverrides } from '../container/spec.js';
import { InvalidArgumentError, TimeoutError } from '../errors.js';
import type { CallOptions } from '../options.js';
import * as validate from '../validate.js';
import type { ContainerConfig } from './containers.js';

/**
 * What to run: the command of a container on the builtin busybox rootfs (`['uname', '-r']`),
 * or a container config as `createContainer` takes it, whose process fields (`args`, `env`,
 * `cwd`, `user`, `terminal`) may also be given at the top level.
 */
export type RunSpec = readonly string[] | (Omit<ContainerConfig, 'stdio' | 'signal' | 'timeoutMs'> & ProcessOverrides & { stdio?: Pick<NonNullable<ContainerConfig['stdio']>, 'transport'> });

/** How `run` hands back the output: `utf8` (default) as strings, `buffer` as Buffers. */
export type RunEncoding = 'utf8' | 'buffer';

/** Options of {@link Sandbox.run} and `sandbox.run`. */
export interface RunOptions<E extends RunEncoding = 'utf8'> extends CallOptions {
  /**
   * Bytes kept of each of stdout and stderr (default 1 MiB, as child_process's `maxBuffer`).
   * What comes after is read and dropped (the container is never blocked by it), and
   * `truncated` says which output lost some.
   */
  maxOutputBytes?: number;
  /** Written to the container's stdin, which is then closed (default: no stdin, /dev/null). */
  input?: string | Uint8Array;
  /** `utf8` (default): stdout and stderr as strings; `buffer`: as Buffers (binary output). */
  encoding?: E;
}

/** How a run ended: the exit status and what the container wrote. */
export interface RunResult<T extends string | Buffer = string> extends ExitStatus {
  /** Its stdout (with a terminal: everything the terminal showed). At most `maxOutputBytes`. */
  stdout: T;
  /** Its stderr (empty with a terminal). At most `maxOutputBytes`. */
  stderr: T;
  /** Which outputs were longer than `maxOutputBytes` (their first bytes are kept). */
  truncated: { stdout: boolean; stderr: boolean };
  /** The container's id. */
  containerId: string;
}

/** The output type of encoding `E`. */
export type RunOutput<E extends RunEncoding> = E extends 'buffer' ? Buffer : string;

/** What `run` needs of a sandbox. */
export interface RunHost {
  createContainer(config: ContainerConfig): Promise<Container>;
}

/** Default of {@link RunOptions.maxOutputBytes}. */
const DEFAULT_MAX_OUTPUT = 1024 * 1024;

const PROCESS_KEYS = ['args', 'env', 'cwd', 'user', 'terminal'] as const;

/** The container config of a run (checked: no side effect yet). */
export function runContainerConfig(spec: RunSpec, stdin: boolean): ContainerConfig {
  if (Array.isArray(spec)) {
    checkOverrides({ args: [...(spec as string[])] }, 'run.args');
    return { process: { args: [...(spec as string[])] }, stdio: { stdin, stdout: true, stderr: true } };
  }
  if (typeof spec !== 'object' || spec === null) throw new InvalidArgumentError('run', 'give the command (an array of strings) or a container config');
  const { args, env, cwd, user, terminal, stdio, signal, timeoutMs, ...rest } = spec as Exclude<RunSpec, readonly string[]> & { signal?: unknown; timeoutMs?: unknown };
  for (const [key, value] of [['signal', signal], ['timeoutMs', timeoutMs]] as const) {
    if (value !== undefined) throw new InvalidArgumentError(`run.${key}`, 'goes in the options (the third argument of Sandbox.run, the second of sandbox.run)');
  }
  const top: ProcessOverrides = {};
  if (args !== undefined) top.args = args;
  if (env !== undefined) top.env = env;
  if (cwd !== undefined) top.cwd = cwd;
  if (user !== undefined) top.user = user;
  if (terminal !== undefined) top.terminal = terminal;
  for (const key of PROCESS_KEYS) {
    if (top[key] !== undefined && rest.process?.[key] !== undefined) throw new InvalidArgumentError(`run.${key}`, `given twice: at the top and in process`);
  }
  const process = checkOverrides({ ...rest.process, ...top }, 'run');
  const config: ContainerConfig = { ...rest, process, stdio: { stdin, stdout: true, stderr: true } };
  if (stdio?.transport !== undefined) config.stdio!.transport = stdio.transport;
  return config;
}

/** The first `max` bytes of a stream; the rest is read and dropped. */
class Capture {
  readonly #chunks: Buffer[] = [];
  #size = 0;
  truncated = false;
  readonly done: Promise<void>;

  constructor(
    readonly stream: Readable | null,
    max: number,
  ) {
    this.done = new Promise((resolve, reject) => {
      if (!stream) return resolve();
      stream.on('data', (chunk: Buffer) => {
        const room = max - this.#size;
        if (chunk.length > room) this.truncated = true;
        if (room <= 0) return;
        const kept = chunk.length > room ? chunk.subarray(0, room) : chunk;
        this.#chunks.push(kept);
        this.#size += kept.length;
      });
      stream.once('end', resolve);
      stream.once('error', reject);
      stream.once('close', () => resolve()); // destroyed without an end: what was read is kept
    });
    this.done.catch(() => undefined);
  }

  get buffer(): Buffer {
    return Buffer.concat(this.#chunks, this.#size);
  }
}

/** Rejects when `signal` aborts (with its reason), else settles as `work` does. */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return work;
  if (signal.aborted) return Promise.reject(signal.reason);
  let onAbort: () => void = () => undefined;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
  });
  return Promise.race([work, aborted]).finally(() => signal.removeEventListener('abort', onAbort));
}

/**
 * Runs `fn` with the call's signal, bounded by `timeoutMs`: a failure that the deadline caused
 * (rather than the caller's own signal) becomes a {@link TimeoutError} naming `what`.
 */
export async function withDeadline<T>(what: string, options: CallOptions, fn: (signal: AbortSignal | undefined) => Promise<T>): Promise<T> {
  if (options.timeoutMs === undefined) return fn(options.signal);
  const timeoutMs = validate.integer(options.timeoutMs, 'timeoutMs', 0, 2 ** 31 - 1);
  const deadline = AbortSignal.timeout(timeoutMs);
  const signal = options.signal ? AbortSignal.any([options.signal, deadline]) : deadline;
  try {
    return await fn(signal);
  } catch (error) {
    if (deadline.aborted && !options.signal?.aborted) throw new TimeoutError(what, timeoutMs, { cause: error });
    throw error;
  }
}

/** Checks the options of a run. */
export function checkRunOptions(options: RunOptions<RunEncoding>): { max: number; encoding: RunEncoding } {
  const max = validate.integer(options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT, 'maxOutputBytes', 0, 2 ** 30);
  const encoding = options.encoding ?? 'utf8';
  if (encoding !== 'utf8' && encoding !== 'buffer') throw new InvalidArgumentError('encoding', 'must be "utf8" or "buffer"');
  if (options.input !== undefined && typeof options.input !== 'string' && !(options.input instanceof Uint8Array)) {
    throw new InvalidArgumentError('input', 'must be a string or a Buffer');
  }
  return { max, encoding };
}

/**
 * Creates a container in `host` from `spec`, starts it, collects its output, waits for its
 * exit and deletes it (also when anything fails or the signal aborts: its processes are killed).
 */
export async function runContainer<E extends RunEncoding>(host: RunHost, spec: RunSpec, options: RunOptions<E> = {}): Promise<RunResult<RunOutput<E>>> {
  const { max, encoding } = checkRunOptions(options);
  const config = runContainerConfig(spec, options.input !== undefined);
  return withDeadline('running a container', options, async (signal) => {
    const container = await host.createContainer(signal ? { ...config, signal } : config);
    const stdout = new Capture(container.stdout, max);
    const stderr = new Capture(container.stderr, max);
    let result: RunResult<RunOutput<E>> | undefined;
    try {
      if (options.input !== undefined) container.stdin?.end(options.input);
      await container.start(signal ? { signal } : {});
      const status = await container.wait(signal ? { signal } : {});
      // The outputs end once the init and its pid namespace are gone.
      await untilAborted(Promise.all([stdout.done, stderr.done]), signal);
      const out = (b: Buffer): RunOutput<E> => (encoding === 'buffer' ? b : b.toString('utf8')) as RunOutput<E>;
      result = {
        exitCode: status.exitCode,
        signal: status.signal,
        oomKilled: status.oomKilled,
        stdout: out(stdout.buffer),
        stderr: out(stderr.buffer),
        truncated: { stdout: stdout.truncated, stderr: stderr.truncated },
        containerId: container.id,
      };
    } catch (error) {
      for (const s of [container.stdin, container.stdout, container.stderr]) s?.destroy();
      await container.delete({ force: true }).catch((cleanup: unknown) => Object.assign(error as Error, { cleanupError: cleanup }));
      throw error;
    }
    await container.delete({ force: true });
    return result;
  });
}

/** What {@link runInNewSandbox} needs of the sandbox it makes. */
export interface ThrowawaySandbox extends RunHost {
  start(options: CallOptions): Promise<void>;
  delete(options: CallOptions & { force?: boolean }): Promise<void>;
}

/**
 * Makes a sandbox with `create`, starts it, runs `spec` in it to completion, and deletes it,
 * whatever happens (abort, deadline, failure); `timeoutMs` bounds the whole call, boot included.
 */
export async function runInNewSandbox<E extends RunEncoding>(
  create: (options: CallOptions) => Promise<ThrowawaySandbox>,
  spec: RunSpec,
  options: RunOptions<E> = {},
): Promise<RunResult<RunOutput<E>>> {
  checkRunOptions(options);
  runContainerConfig(spec, options.input !== undefined); // bad input fails before a VM is made
  return withDeadline('running a container in a new sandbox', options, async (signal) => {
    const call: CallOptions = signal ? { signal } : {};
    const sandbox = await create(call);
    let result: RunResult<RunOutput<E>>;
    try {
      await sandbox.start(call);
      result = await runContainer(sandbox, spec, { ...options, ...call, timeoutMs: undefined });
    } catch (error) {
      await sandbox.delete({ force: true }).catch((cleanup: unknown) => Object.assign(error as Error, { cleanupError: cleanup }));
      throw error;
    }
    await sandbox.delete({ force: true });
    return result;
  });
}
