/**
 * The shim's server process: one per containerd (address) and namespace, serving the Task API
 * of every task of that namespace on one unix socket. `start` spawns it detached and waits for
 * the line `ready` on its fd 3.
 *
 * - It logs to `shim.log` in its own directory (capped), never to stdout/stderr.
 * - It goes away when the task service calls `onIdle` (Shutdown asked, no task left) and no
 *   `start` handed its address out for a task that has not been created yet (a reservation,
 *   see {@link MANAGER_SERVICE}): then, under the start lock, it removes its socket (a later
 *   `start` spawns a new server), closes, and exits.
 * - SIGTERM/SIGINT: the same, at once (the task service's `close()` first).
 * - containerd going away and coming back is nothing to it: it keeps listening; the events
 *   publisher retries.
 * - An unhandled rejection or exception is logged; the other pods are served on.
 *
 * @module
 */
import fs from 'node:fs';
import path from 'node:path';
import { FileLock } from '../state/lock.js';
import { EventPublisher } from './events.js';
import type { ShimLog } from './log.js';
import { fileLog } from './log.js';
import { encodeMessage } from './proto/index.js';
import type { CallContext, TaskApi } from './proto/task-api.js';
import { TASK_METHODS } from './proto/task-api.js';
import { TtrpcServer } from './ttrpc/server.js';
import { registerTaskApi, unimplementedTaskApi } from './ttrpc/task.js';

/** What the server gives the task service (T's `TaskService` takes these). */
export interface TaskServiceOptions {
  namespace: string;
  stateDir?: string;
  publisher: EventPublisher;
  log: ShimLog;
  /** Called when Shutdown was asked and no task is left. */
  onIdle: () => void;
}

/** A task service as the server uses it: the Task API, plus how many tasks it has and a close. */
export type ServedTaskApi = TaskApi & { readonly taskCount?: number; close?(): Promise<void> };

export type TaskServiceFactory = (options: TaskServiceOptions) => ServedTaskApi;

/**
 * The server's own small ttRPC service for `start`: `Reserve` (the payload is a task id as
 * UTF-8) says that `start` has handed this server's address out for that task, so the server
 * must not exit before that task's Create arrives (or `reservationMs` passes).
 */
export const MANAGER_SERVICE = 'vmpod.shim.v1.Manager';

export interface ShimServerOptions {
  namespace: string;
  /** containerd's ttRPC address, for the events. */
  ttrpcAddress: string;
  socketPath: string;
  /** The server's directory (log, start lock). */
  serverDir: string;
  /** The lock `start` takes; the server takes it to go away. */
  lockPath: string;
  debug?: boolean;
  /** Builds the task service; by default one that answers UNIMPLEMENTED. */
  taskService?: TaskServiceFactory;
  /** How long a reservation holds the server. Default 60 s. */
  reservationMs?: number;
  log?: ShimLog;
  /** Called once the server has closed (the bin exits then). */
  onClosed?: () => void;
}

export class ShimServer {
  readonly log: ShimLog;
  readonly #options: ShimServerOptions;
  readonly #ttrpc: TtrpcServer;
  readonly #publisher: EventPublisher;
  readonly #tasks: ServedTaskApi;
  readonly #reservations = new Map<string, NodeJS.Timeout>();
  #idleAsked = false;
  #closing: Promise<void> | undefined;

  constructor(options: ShimServerOptions) {
    this.#options = options;
    fs.mkdirSync(options.serverDir, { recursive: true, mode: 0o700 });
    this.log = options.log ?? fileLog(path.join(options.serverDir, 'shim.log'), { debug: options.debug === true });
    this.#publisher = new EventPublisher({ ttrpcAddress: options.ttrpcAddress, namespace: options.namespace, log: this.log });
    const factory = options.taskService ?? (() => unimplementedTaskApi());
    this.#tasks = factory({ namespace: options.namespace, publisher: this.#publisher, log: this.log, onIdle: () => this.#onIdle() });
    this.#ttrpc = new TtrpcServer({ log: this.log });
    // Create ends the reservation `start` made for its task.
    const tasks = this.#tasks;
    // Each method called on the service itself (a class with private fields needs its own `this`).
    const served = {} as Record<string, unknown>;
    for (const { handler } of Object.values(TASK_METHODS)) {
      served[handler] = (r: unknown, ctx: CallContext) => (tasks[handler] as (r: unknown, c: CallContext) => Promise<unknown>).call(tasks, r, ctx);
    }
    (served as unknown as TaskApi).create = async (r, ctx) => {
      try {
        return await tasks.create(r, ctx);
      } finally {
        this.#unreserve(r.id);
      }
    };
    registerTaskApi(this.#ttrpc, served as unknown as TaskApi);
    this.#ttrpc.register(MANAGER_SERVICE, 'Reserve', async (payload) => {
      this.#reserve(payload.toString('utf8'));
      return encodeMessage('google.protobuf.Empty', {});
    });
  }

  /** Listens on the socket. */
  async listen(): Promise<void> {
    fs.mkdirSync(path.dirname(this.#options.socketPath), { recursive: true, mode: 0o711 });
    await this.#ttrpc.listen(this.#options.socketPath);
    this.log.info(`serving namespace ${this.#options.namespace} on ${this.#options.socketPath} (pid ${process.pid})`);
  }

  /** Tasks reserved by `start` and not created yet. */
  get reservations(): string[] {
    return [...this.#reservations.keys()];
  }

  #reserve(id: string): void {
    clearTimeout(this.#reservations.get(id));
    const timer = setTimeout(() => {
      this.#reservations.delete(id);
      this.log.warn(`reservation of task ${id} expired without a Create`);
      if (this.#idleAsked) this.#onIdle();
    }, this.#options.reservationMs ?? 60_000);
    timer.unref();
    this.#reservations.set(id, timer);
    this.log.debug(`task ${id} reserved`);
  }

  #unreserve(id: string): void {
    const timer = this.#reservations.get(id);
    if (timer === undefined) return;
    clearTimeout(timer);
    this.#reservations.delete(id);
  }

  #onIdle(): void {
    this.#idleAsked = true;
    if (this.#closing !== undefined) return;
    void (async () => {
      // Under the start lock: no `start` can hand our address out while we go.
      let lock: FileLock | undefined;
      try {
        lock = await FileLock.acquire(this.#options.lockPath, { timeoutMs: 30_000 });
      } catch (error) {
        this.log.warn(`idle, but the start lock: ${(error as Error).message}; staying`);
        return;
      }
      try {
        if (this.#reservations.size > 0 || (this.#tasks.taskCount ?? 0) > 0) {
          this.log.info(`idle asked, staying: ${this.#reservations.size} reserved, ${this.#tasks.taskCount ?? 0} tasks`);
          return;
        }
        this.log.info('no task left after Shutdown: exiting');
        fs.rmSync(this.#options.socketPath, { force: true });
        await this.close('idle');
      } finally {
        await lock.release();
      }
    })().catch((error: unknown) => this.log.error(`idle: ${(error as Error).message}`));
  }

  /** Closes everything (idempotent): the socket, the task service, the events (bounded). */
  close(reason: string): Promise<void> {
    this.#closing ??= (async () => {
      this.log.info(`closing (${reason})`);
      fs.rmSync(this.#options.socketPath, { force: true });
      await this.#ttrpc.close();
      await this.#tasks.close?.().catch((error: unknown) => this.log.error(`task service close: ${(error as Error).message}`));
      for (const timer of this.#reservations.values()) clearTimeout(timer);
      this.#reservations.clear();
      await Promise.race([this.#publisher.close(), new Promise((resolve) => setTimeout(resolve, 5000).unref())]);
      this.log.info('closed');
      this.#options.onClosed?.();
    })();
    return this.#closing;
  }
}
