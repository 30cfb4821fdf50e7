/**
 * An asynchronous client of QEMU's machine protocol (QMP) on a unix socket: capabilities
 * negotiation, commands with timeouts and AbortSignals, events, typed errors, and fd passing
 * with SCM_RIGHTS for `getfd`/`add-fd`.
 *
 * The peer is treated as untrusted: lines are bounded, invalid JSON or an unexpected message
 * is a {@link QmpProtocolError} that closes the connection (it never throws into the event
 * loop), and pending commands are rejected when the connection goes.
 *
 * @module
 */
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { EventEmitter } from 'eventemitter3';
import { AbortError, TimeoutError } from '../../errors.js';
import { native } from '../../native.js';
import { systemError } from '../../native-call.js';
import { QmpError, QmpProtocolError } from '../errors.js';

/** Data of the events vmpod reacts to; other events carry an unchecked object. */
export interface QmpEventData {
  SHUTDOWN: { guest: boolean; reason: string };
  POWERDOWN: Record<string, never>;
  RESET: { guest: boolean; reason: string };
  STOP: Record<string, never>;
  RESUME: Record<string, never>;
  /** Emitted twice by `device_del` of a virtio device: once for the virtio backend (no `device`), once for the device. */
  DEVICE_DELETED: { device?: string; path: string };
  GUEST_PANICKED: { action: string };
}

/** A QMP event. */
export interface QmpEvent<K extends string = string> {
  readonly event: K;
  readonly data: K extends keyof QmpEventData ? QmpEventData[K] : Record<string, unknown>;
  /** Host time QEMU emitted it. */
  readonly timestamp: { readonly seconds: number; readonly microseconds: number };
}

/** The server's greeting. */
export interface QmpGreeting {
  readonly version: { readonly qemu: { readonly major: number; readonly minor: number; readonly micro: number }; readonly package: string };
  readonly capabilities: readonly string[];
}

/** Events of a {@link QmpClient}. */
export interface QmpClientEvents {
  /** Any QMP event. */
  event: (event: QmpEvent) => void;
  /** The connection is closed; `error` says why when it was not {@link QmpClient.close}. */
  close: (error: Error | undefined) => void;
}

/** Options of a command. */
export interface QmpCommandOptions {
  /** Default {@link QmpClient.defaultTimeoutMs}. */
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal | undefined;
  /** Passed with the command as SCM_RIGHTS, for `getfd` and `add-fd`. */
  readonly fds?: readonly number[];
}

/** Options of {@link QmpClient.connect}. */
export interface QmpConnectOptions {
  /** Time for the greeting and the capabilities negotiation (default 10 s). */
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal | undefined;
  /** Longest accepted line (default 4 MiB). */
  readonly maxLineBytes?: number;
  /** Default timeout of commands (default 30 s). */
  readonly commandTimeoutMs?: number;
}

interface Pending {
  readonly command: string;
  resolve(value: unknown): void;
  reject(error: Error): void;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A QMP connection. Create with {@link QmpClient.connect}. */
export class QmpClient extends EventEmitter<QmpClientEvents> {
  /** The server's greeting (set once connected). */
  greeting: QmpGreeting | undefined;
  /** Timeout of commands that do not give one. */
  readonly defaultTimeoutMs: number;

  readonly #socket: net.Socket;
  readonly #fd: number;
  readonly #maxLine: number;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #buffer = '';
  #writes: Promise<void> = Promise.resolve();
  #closed = false;
  #closeError: Error | undefined;
  #onGreeting: ((greeting: QmpGreeting) => void) | undefined;

  private constructor(fd: number, options: QmpConnectOptions) {
    super();
    this.#fd = fd;
    this.#maxLine = options.maxLineBytes ?? 4 * 1024 * 1024;
    this.defaultTimeoutMs = options.commandTimeoutMs ?? 30_000;
    this.#socket = new net.Socket({ fd, readable: true, writable: true });
    // An idle connection does not keep the process alive; pending commands and waits do (their timers).
    this.#socket.unref();
    this.#socket.setEncoding('utf8');
    this.#socket.on('data', (chunk: string) => this.#onData(chunk));
    this.#socket.on('error', (error) => this.#shutdown(new QmpProtocolError(`socket error: ${error.message}`, { cause: error })));
    this.#socket.on('close', () => this.#shutdown(new QmpProtocolError('connection closed by QEMU')));
  }

  /**
   * Connects to a QMP socket, reads the greeting and negotiates capabilities
   * (`qmp_capabilities`). Equivalent of `socat - UNIX-CONNECT:PATH` + `{"execute":"qmp_capabilities"}`.
   */
  static async connect(socketPath: string, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = options.timeoutMs ?? 10_000;
    if (options.signal?.aborted) throw new AbortError('QMP connect', { cause: options.signal.reason });
    let fd: number;
    try {
      fd = native().unixConnect(socketPath);
    } catch (error) {
      throw systemError(error);
    }
    const client = new QmpClient(fd, options);
    try {
      const greeting = await client.#withDeadline(
        new Promise<QmpGreeting>((resolve, reject) => {
          client.#onGreeting = resolve;
          client.once('close', (error) => reject(error ?? new QmpProtocolError('closed before the greeting')));
        }),
        'QMP greeting',
        timeoutMs,
        options.signal,
      );
      client.greeting = greeting;
      await client.execute('qmp_capabilities', undefined, { timeoutMs, signal: options.signal });
      return client;
    } catch (error) {
      client.close();
      throw error;
    }
  }

  /** True once the connection is closed. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Runs a command and resolves with its `return` value; rejects with {@link QmpError} when
   * QEMU answers with an error, {@link TimeoutError} or {@link AbortError}. A late answer to a
   * command that timed out is dropped.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, options: QmpCommandOptions = {}): Promise<T> {
    if (this.#closed) return Promise.reject(this.#closeError ?? new QmpProtocolError('connection is closed'));
    if (options.signal?.aborted) return Promise.reject(new AbortError(`QMP ${command}`, { cause: options.signal.reason }));
    const id = this.#nextId++;
    const message: Record<string, unknown> = { execute: command, id };
    if (args !== undefined) message['arguments'] = args;
    const line = Buffer.from(`${JSON.stringify(message)}\n`);
    const answer = new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { command, resolve: resolve as (value: unknown) => void, reject });
    });
    this.#write(line, options.fds ?? []).catch((error: unknown) => {
      this.#settle(id, undefined, error instanceof Error ? error : new Error(String(error)));
    });
    return this.#withDeadline(answer, `QMP ${command}`, options.timeoutMs ?? this.defaultTimeoutMs, options.signal).finally(() => {
      this.#pending.delete(id);
    });
  }

  /**
   * Resolves with the next event `name` whose data passes `predicate`. Subscribe before
   * sending the command that causes it.
   */
  waitForEvent<K extends string>(
    name: K,
    predicate: (data: QmpEvent<K>['data']) => boolean = () => true,
    options: { readonly timeoutMs?: number; readonly signal?: AbortSignal | undefined } = {},
  ): Promise<QmpEvent<K>> {
    let onEvent: ((event: QmpEvent) => void) | undefined;
    let onClose: ((error: Error | undefined) => void) | undefined;
    const wait = new Promise<QmpEvent<K>>((resolve, reject) => {
      if (this.#closed) {
        reject(this.#closeError ?? new QmpProtocolError('connection is closed'));
        return;
      }
      onEvent = (event) => {
        if (event.event === name && predicate(event.data as QmpEvent<K>['data'])) resolve(event as QmpEvent<K>);
      };
      onClose = (error) => reject(error ?? new QmpProtocolError('connection is closed'));
      this.on('event', onEvent);
      this.once('close', onClose);
    });
    return this.#withDeadline(wait, `waiting for QMP event ${name}`, options.timeoutMs ?? this.defaultTimeoutMs, options.signal).finally(() => {
      if (onEvent) this.off('event', onEvent);
      if (onClose) this.off('close', onClose);
    });
  }

  /** Closes the connection; pending commands are rejected. */
  close(): void {
    this.#shutdown(undefined);
  }

  #withDeadline<T>(promise: Promise<T>, what: string, timeoutMs: number, signal: AbortSignal | undefined): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new TimeoutError(what, timeoutMs)), timeoutMs);
      const onAbort = (): void => reject(new AbortError(what, { cause: signal?.reason }));
      signal?.addEventListener('abort', onAbort, { once: true });
      promise.then(resolve, reject).finally(() => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      });
    });
  }

  /** Writes are chained so that a native sendmsg never interleaves with a pending libuv write. */
  #write(data: Buffer, fds: readonly number[]): Promise<void> {
    const next = this.#writes.then(async () => {
      if (this.#closed) throw this.#closeError ?? new QmpProtocolError('connection is closed');
      let rest = data;
      if (fds.length > 0) {
        for (let attempt = 0; ; attempt++) {
          try {
            rest = data.subarray(native().sendFds(this.#fd, data, fds));
            break;
          } catch (error) {
            if ((error as NodeJS.ErrnoException).code !== 'EAGAIN' || attempt >= 200) throw error;
            await sleep(5);
          }
        }
      }
      if (rest.length > 0) {
        await new Promise<void>((resolve, reject) => {
          this.#socket.write(rest, (error) => (error ? reject(error) : resolve()));
        });
      }
    });
    this.#writes = next.catch(() => undefined);
    return next;
  }

  #onData(chunk: string): void {
    let start = 0;
    let newline: number;
    // Only the new chunk is searched, so a long partial line costs linear time.
    while (!this.#closed && (newline = chunk.indexOf('\n', start)) >= 0) {
      const line = this.#buffer + chunk.slice(start, newline);
      this.#buffer = '';
      start = newline + 1;
      if (line.length > this.#maxLine) {
        this.#shutdown(new QmpProtocolError(`a line of ${line.length} characters exceeds the limit of ${this.#maxLine}`));
        return;
      }
      const trimmed = line.trim();
      if (trimmed !== '') this.#onLine(trimmed);
    }
    if (this.#closed) return;
    this.#buffer += chunk.slice(start);
    if (this.#buffer.length > this.#maxLine) {
      this.#shutdown(new QmpProtocolError(`a line exceeds the limit of ${this.#maxLine} characters`));
    }
  }

  #onLine(line: string): void {
    let message: unknown;
    try {
      message = JSON.parse(line);
    } catch (error) {
      this.#shutdown(new QmpProtocolError(`invalid JSON from QEMU: ${line.slice(0, 80)}`, { cause: error }));
      return;
    }
    if (!isRecord(message)) {
      this.#shutdown(new QmpProtocolError('a QMP message must be a JSON object'));
      return;
    }
    if ('QMP' in message) {
      const qmp = message['QMP'];
      if (this.#onGreeting === undefined || !isRecord(qmp) || !isRecord(qmp['version']) || !Array.isArray(qmp['capabilities'])) {
        this.#shutdown(new QmpProtocolError('unexpected or malformed greeting'));
        return;
      }
      const onGreeting = this.#onGreeting;
      this.#onGreeting = undefined;
      onGreeting(qmp as unknown as QmpGreeting);
      return;
    }
    if (typeof message['event'] === 'string') {
      const ts = message['timestamp'];
      const event: QmpEvent = {
        event: message['event'],
        data: isRecord(message['data']) ? message['data'] : {},
        timestamp: isRecord(ts) && typeof ts['seconds'] === 'number' && typeof ts['microseconds'] === 'number'
          ? { seconds: ts['seconds'], microseconds: ts['microseconds'] }
          : { seconds: 0, microseconds: 0 },
      };
      this.emit('event', event);
      return;
    }
    const id = message['id'];
    if ('return' in message) {
      if (typeof id === 'number') this.#settle(id, message['return'], undefined);
      return;
    }
    if ('error' in message) {
      const error = message['error'];
      const qmpClass = isRecord(error) && typeof error['class'] === 'string' ? error['class'] : 'GenericError';
      const desc = isRecord(error) && typeof error['desc'] === 'string' ? error['desc'] : 'no description';
      // QEMU answers without an id only when it could not parse the request: the oldest pending one.
      const target = typeof id === 'number' ? id : this.#pending.keys().next().value;
      if (target !== undefined) {
        const pending = this.#pending.get(target);
        this.#settle(target, undefined, new QmpError(pending?.command ?? 'unknown', qmpClass, desc));
      }
      return;
    }
    this.#shutdown(new QmpProtocolError('a QMP message must be a greeting, an event, a return or an error'));
  }

  #settle(id: number, value: unknown, error: Error | undefined): void {
    const pending = this.#pending.get(id);
    if (pending === undefined) return;
    this.#pending.delete(id);
    if (error) pending.reject(error);
    else pending.resolve(value);
  }

  #shutdown(error: Error | undefined): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeError = error ?? new QmpProtocolError('connection is closed');
    this.#socket.destroy();
    for (const [id, pending] of [...this.#pending]) {
      this.#pending.delete(id);
      pending.reject(this.#closeError);
    }
    this.emit('close', error);
  }
}
