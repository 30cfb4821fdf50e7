// A scripted stand-in for the guest agent over an in-memory Duplex, for the client's unit and
// fuzz tests: it decodes the client's frames and lets a test answer (or attack) with raw bytes.
// It can also stop reading (the transport's write callbacks are held, as a socket whose peer
// never reads), read slowly, and watch frames as the client offers them to the transport.
import { Duplex, Readable } from 'node:stream';
import { FLAG_WINDOW, FrameType, HEADER_SIZE, INITIAL_WINDOW, encodeFrame } from '../../src/agent/framing.js';

export interface FakeRequest {
  stream: number;
  method: string;
  params: Record<string, unknown>;
}

export interface FakeData {
  stream: number;
  flags: number;
  payload: Buffer;
}

export const VALID_INFO = {
  version: 1,
  agent: 'vmpod-agent/test',
  pid: 1,
  pid1: true,
  cgroups: true,
  controllers: ['memory', 'pids'],
  stateDir: '/run/vmpod',
  maxPayload: 1 << 20,
  maxDataChunk: 65536,
  initialWindow: INITIAL_WINDOW,
  features: ['containers'],
};

export interface FakeFrame {
  stream: number;
  type: number;
  flags: number;
  payload: Buffer;
}

export class FakeAgent {
  readonly transport: Duplex;
  readonly requests: FakeRequest[] = [];
  readonly data: FakeData[] = [];
  onRequest: (request: FakeRequest) => void = () => {};
  /** Data frames read; when set, `data` keeps only window and close frames (for large transfers). */
  onData: ((data: FakeData) => void) | null = null;
  /** Every frame the client hands to the transport, when it does (before the fake reads it). */
  onOffer: ((frame: FakeFrame) => void) | null = null;
  /** Delay before each chunk the client wrote is read (a slow guest). */
  readDelayMs = 0;
  /** Bytes read so far. */
  bytesRead = 0;
  #pending = Buffer.alloc(0);
  #paused = false;
  #held: (() => void) | null = null;
  #timers = new Set<NodeJS.Timeout>();

  constructor(options: { answerHello?: boolean } = {}) {
    const answerHello = options.answerHello ?? true;
    const read = (chunk: Buffer, callback: () => void): void => {
      this.bytesRead += chunk.length;
      this.#read(chunk, answerHello);
      callback();
    };
    this.transport = new Duplex({
      read() {},
      write: (chunk: Buffer, _encoding, callback) => {
        const go = () => read(chunk, callback);
        if (this.#paused) this.#held = go;
        else if (this.readDelayMs > 0) this.#later(this.readDelayMs, () => (this.#paused ? (this.#held = go) : go()));
        else go();
      },
      destroy: (error, callback) => {
        for (const t of this.#timers) clearTimeout(t);
        this.#timers.clear();
        this.#held = null;
        callback(error);
      },
    });
    const write = this.transport.write.bind(this.transport) as (...args: unknown[]) => boolean;
    // The client writes one whole frame per write() call.
    this.transport.write = ((chunk: Buffer, ...rest: unknown[]) => {
      if (this.onOffer && Buffer.isBuffer(chunk) && chunk.length >= HEADER_SIZE) {
        this.onOffer({
          stream: chunk.readUInt32BE(4),
          type: chunk.readUInt8(8),
          flags: chunk.readUInt8(9),
          payload: chunk.subarray(HEADER_SIZE),
        });
      }
      return write(chunk, ...rest);
    }) as Duplex['write'];
  }

  /** The guest stops reading: the chunk being written and everything after it wait. */
  pauseReading(): void {
    this.#paused = true;
  }

  /** The guest reads again. */
  resumeReading(): void {
    this.#paused = false;
    const held = this.#held;
    this.#held = null;
    held?.();
  }

  /** Runs `fn` after `ms` unless the transport is destroyed first. */
  #later(ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      this.#timers.delete(t);
      fn();
    }, ms);
    this.#timers.add(t);
  }

  #read(chunk: Buffer, answerHello: boolean): void {
    this.#pending = Buffer.concat([this.#pending, chunk]);
    while (this.#pending.length >= HEADER_SIZE) {
      const length = this.#pending.readUInt32BE(0);
      if (this.#pending.length < HEADER_SIZE + length) break;
      const stream = this.#pending.readUInt32BE(4);
      const type = this.#pending.readUInt8(8);
      const flags = this.#pending.readUInt8(9);
      const payload = this.#pending.subarray(HEADER_SIZE, HEADER_SIZE + length);
      this.#pending = this.#pending.subarray(HEADER_SIZE + length);
      if (type === FrameType.Request) {
        const body = JSON.parse(payload.toString()) as { method: string; params: Record<string, unknown> };
        const request = { stream, method: body.method, params: body.params };
        this.requests.push(request);
        if (answerHello && body.method === 'Hello') this.respond(stream, VALID_INFO);
        else this.onRequest(request);
      } else if (this.onData && flags === 0) {
        this.onData({ stream, flags, payload });
      } else {
        this.data.push({ stream, flags, payload: Buffer.from(payload) });
      }
    }
  }

  /** Raw bytes to the client. */
  send(bytes: Buffer): void {
    this.transport.push(bytes);
  }

  respond(stream: number, result: unknown): void {
    this.send(encodeFrame(stream, FrameType.Response, 0, Buffer.from(JSON.stringify({ result }))));
  }

  respondError(stream: number, code: string, message: string): void {
    this.send(encodeFrame(stream, FrameType.Response, 0, Buffer.from(JSON.stringify({ error: { code, message } }))));
  }

  sendData(stream: number, payload: Buffer, flags = 0): void {
    this.send(encodeFrame(stream, FrameType.Data, flags, payload));
  }

  /** The peer hangs up. */
  end(): void {
    this.transport.push(null);
  }
}

/** A 4-byte big-endian number (a window increment). */
export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
}

/**
 * A hostile guest that grants stdin credit for every data frame the client offers to the
 * transport, whether or not it ever reads it: credit never stops the client, only its own bound
 * on the transport can.
 */
export function grantOnOffer(fake: FakeAgent, stream: number): void {
  fake.onOffer = (f) => {
    if (f.stream !== stream || f.type !== FrameType.Data || f.flags !== 0 || f.payload.length === 0) return;
    const n = f.payload.length;
    setImmediate(() => {
      if (!fake.transport.destroyed) fake.sendData(stream, u32(n), FLAG_WINDOW);
    });
  };
}

/** Content at byte offset `offset` (a multiple of 4) of a test stream: each 32-bit word is its own index. */
export function pattern(offset: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(length);
  const words = new Uint32Array(b.buffer, b.byteOffset, length >>> 2);
  for (let i = 0, w = offset >>> 2; i < words.length; i++, w++) words[i] = w;
  return b;
}

/** A Readable of `total` bytes of {@link pattern}, in `chunk`-byte pieces; `produced` counts what it handed out. */
export function patternSource(total: number, chunk = 64 * 1024): { stream: Readable; produced: () => number } {
  let produced = 0;
  const stream = new Readable({
    highWaterMark: chunk,
    read() {
      if (produced >= total) return void this.push(null);
      const n = Math.min(chunk, total - produced);
      const b = pattern(produced, n);
      produced += n;
      this.push(b);
    },
  });
  return { stream, produced: () => produced };
}

/**
 * Checks the bytes that reach the fake on `stream` against {@link pattern}, in order, without
 * keeping them: `received` counts them, `mismatch` is the first offset that differed.
 */
export function checkArrivals(fake: FakeAgent, stream: number): { received: () => number; mismatch: () => number | null } {
  let received = 0;
  let mismatch: number | null = null;
  fake.onData = (d) => {
    if (d.stream !== stream) return;
    if (mismatch === null && !d.payload.equals(pattern(received, d.payload.length))) mismatch = received;
    received += d.payload.length;
  };
  return { received: () => received, mismatch: () => mismatch };
}

/**
 * Records the timers created with the global setTimeout from now on (the client's deadlines,
 * the fake's read delays) and which are still pending: a closed client must leave none.
 */
export function watchTimers(): { pending: () => number; restore: () => void } {
  const realSet = globalThis.setTimeout;
  const realClear = globalThis.clearTimeout;
  const live = new Set<unknown>();
  globalThis.setTimeout = ((fn: (...a: unknown[]) => void, ms?: number, ...args: unknown[]) => {
    const t = realSet(() => {
      live.delete(t);
      fn(...args);
    }, ms);
    live.add(t);
    return t;
  }) as typeof setTimeout;
  globalThis.clearTimeout = ((t: NodeJS.Timeout | string | number | undefined) => {
    live.delete(t);
    realClear(t);
  }) as typeof clearTimeout;
  return {
    pending: () => live.size,
    restore: () => {
      globalThis.setTimeout = realSet;
      globalThis.clearTimeout = realClear;
    },
  };
}

/** Resolves with what `p` settled to, or `'pending'` if it did not within `ms` (a hang fails a test, it does not stall it). */
export async function settled<T>(p: Promise<T>, ms: number): Promise<{ value: T } | { error: unknown } | 'pending'> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'pending'>((r) => {
    timer = setTimeout(() => r('pending'), ms);
  });
  try {
    return await Promise.race([p.then((value) => ({ value }), (error: unknown) => ({ error })), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
