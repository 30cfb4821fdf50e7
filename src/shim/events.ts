/**
 * Task events to containerd: `containerd.services.events.ttrpc.v1.Events/Forward` on the ttRPC
 * address containerd gave the shim (TTRPC_ADDRESS at `start`). Each event is wrapped at
 * `publish` time in an Envelope (timestamp, namespace, topic, the event as an Any whose type URL
 * is the bare message name, `containerd.events.TaskExit`, as containerd's own shims send them).
 *
 * Events go out one at a time in the order published. While containerd is away (restarting) the
 * head of the queue is retried with a growing delay, up to `maxAttempts`; then it is given up
 * (logged) and the next goes. containerd refusing an event (a status other than UNAVAILABLE or
 * DEADLINE_EXCEEDED) is not retried. The queue holds at most `maxQueue` events: past that the
 * oldest is dropped and logged.
 *
 * @module
 */
import { encodeAny, encodeMessage } from './proto/index.js';
import type { ShimLog } from './log.js';
import { TtrpcClient } from './ttrpc/client.js';
import { NAMESPACE_KEY } from './ttrpc/server.js';
import { GrpcCode, TtrpcError } from './ttrpc/status.js';

export type EventTopic =
  | '/tasks/create'
  | '/tasks/start'
  | '/tasks/exit'
  | '/tasks/delete'
  | '/tasks/oom'
  | '/tasks/exec-added'
  | '/tasks/exec-started'
  | '/tasks/paused'
  | '/tasks/resumed';

export const EVENTS_SERVICE = 'containerd.services.events.ttrpc.v1.Events';

export interface EventPublisherOptions {
  /** containerd's ttRPC socket (a path, or `unix://path`). */
  ttrpcAddress: string;
  namespace: string;
  log: ShimLog;
  /** Attempts per event while containerd cannot be reached. Default 60. */
  maxAttempts?: number;
  /** First retry delay; doubles up to 2 s. Default 50 ms. */
  retryDelayMs?: number;
  /** Events held at most. Default 4096. */
  maxQueue?: number;
  /** Per Forward call. Default 5 s. */
  callTimeoutMs?: number;
}

interface Queued {
  seq: number;
  topic: string;
  request: Buffer;
}

export class EventPublisher {
  readonly #options: Required<Omit<EventPublisherOptions, 'log'>> & { log: ShimLog };
  readonly #queue: Queued[] = [];
  readonly #flushWaiters: { seq: number; resolve: () => void }[] = [];
  #seq = 0;
  #done = 0; // every event with seq <= #done was sent or given up
  #client: TtrpcClient | undefined;
  #pumping = false;
  #closed = false;

  constructor(options: EventPublisherOptions) {
    this.#options = {
      maxAttempts: 60,
      retryDelayMs: 50,
      maxQueue: 4096,
      callTimeoutMs: 5000,
      ...options,
    };
  }

  /** Events waiting to go out. */
  get pending(): number {
    return this.#queue.length;
  }

  /** Queues a containerd event (`typeName` like `containerd.events.TaskExit`). */
  publish(topic: EventTopic, typeName: string, event: object): void {
    if (this.#closed) {
      this.#options.log.warn(`event ${topic} after the publisher closed: dropped`);
      return;
    }
    const request = encodeMessage('containerd.services.events.ttrpc.v1.ForwardRequest', {
      envelope: { timestamp: new Date(), namespace: this.#options.namespace, topic, event: encodeAny(typeName, event) },
    });
    this.#queue.push({ seq: ++this.#seq, topic, request });
    if (this.#queue.length > this.#options.maxQueue) {
      const dropped = this.#queue.shift()!;
      this.#options.log.error(`event queue over ${this.#options.maxQueue}: dropped ${dropped.topic} #${dropped.seq}`);
      this.#settle(dropped.seq);
    }
    this.#pump();
  }

  /** Resolves when everything queued so far was sent (or given up). */
  flush(): Promise<void> {
    const target = this.#seq;
    if (this.#done >= target) return Promise.resolve();
    return new Promise((resolve) => this.#flushWaiters.push({ seq: target, resolve }));
  }

  /** Flushes (bounded by the retry limit), then closes the connection; later events are dropped. */
  async close(): Promise<void> {
    await this.flush();
    this.#closed = true;
    this.#client?.close();
    this.#client = undefined;
  }

  #settle(seq: number): void {
    if (seq > this.#done) this.#done = seq;
    const ready = this.#flushWaiters.filter((w) => w.seq <= this.#done);
    for (const w of ready) {
      this.#flushWaiters.splice(this.#flushWaiters.indexOf(w), 1);
      w.resolve();
    }
  }

  #pump(): void {
    if (this.#pumping) return;
    this.#pumping = true;
    void this.#run().finally(() => {
      this.#pumping = false;
      if (this.#queue.length > 0) this.#pump();
    });
  }

  async #run(): Promise<void> {
    const { log, maxAttempts, retryDelayMs, callTimeoutMs, ttrpcAddress, namespace } = this.#options;
    while (this.#queue.length > 0) {
      const head = this.#queue[0]!;
      let attempt = 0;
      for (;;) {
        attempt += 1;
        let error: unknown;
        try {
          if (this.#client === undefined || this.#client.closed) this.#client = await TtrpcClient.connect(ttrpcAddress, { timeoutMs: callTimeoutMs });
          await this.#client.call(EVENTS_SERVICE, 'Forward', head.request, { timeoutMs: callTimeoutMs, metadata: { [NAMESPACE_KEY]: namespace } });
          log.debug(`event ${head.topic} #${head.seq} sent`);
          break;
        } catch (e) {
          error = e;
        }
        const code = error instanceof TtrpcError ? error.grpcCode : GrpcCode.UNAVAILABLE;
        const message = (error as Error).message;
        if (code !== GrpcCode.UNAVAILABLE && code !== GrpcCode.DEADLINE_EXCEEDED) {
          log.error(`event ${head.topic} #${head.seq} refused by containerd: ${message}`);
          break;
        }
        this.#client?.close();
        this.#client = undefined;
        if (attempt >= maxAttempts) {
          log.error(`event ${head.topic} #${head.seq} given up after ${attempt} attempts: ${message}`);
          break;
        }
        if (attempt === 1) log.warn(`event ${head.topic} #${head.seq}: containerd not reachable (${message}); retrying`);
        const delay = Math.min(retryDelayMs * 2 ** (attempt - 1), 2000);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, delay);
          timer.unref();
        });
        if (this.#queue[0] !== head) break; // dropped from the queue while waiting
      }
      if (this.#queue[0] === head) this.#queue.shift();
      this.#settle(head.seq);
    }
  }
}
