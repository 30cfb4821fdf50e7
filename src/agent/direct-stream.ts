/**
 * The host end of a direct stream (docs/agent-protocol.md, "Direct streams"): a container
 * init's stdout or stderr written by the container straight into a virtio-serial port of its
 * own, which QEMU binds to a unix socket. The agent writes a random 32-byte marker into the
 * port before the container can write (start) and after the container's init was reaped
 * (end); the bytes between the two are the stream. Only the host and the agent know the
 * marker, so the container can neither end its stream early by writing it nor hide bytes
 * after it.
 *
 * Everything from the port is hostile: at most {@link MAX_BEFORE_START} bytes may come before
 * the start marker, at most {@link MARKER_SIZE} - 1 bytes are held back (the longest tail that
 * could begin the end marker), and bytes after the end marker are dropped.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { Readable } from 'node:stream';
import { AbortError } from '../errors.js';
import { AgentClosedError, AgentProtocolError } from './errors.js';

/** Size of the start/end marker, in bytes. */
export const MARKER_SIZE = 32;
/** Bytes tolerated before the start marker (what an earlier user of the port left in flight). */
export const MAX_BEFORE_START = 1024 * 1024;

const EMPTY = Buffer.alloc(0);

/**
 * A fresh marker: 0xFF, then 31 random bytes (248 bits). 0xFF never occurs in UTF-8, so text
 * output is never held back waiting to see whether a marker begins.
 */
export function newMarker(): Buffer {
  const marker = randomBytes(MARKER_SIZE);
  marker[0] = 0xff;
  return marker;
}

/** Length of the longest tail of `buf` that is a proper prefix of `marker`. */
function partialTail(buf: Buffer, marker: Buffer): number {
  for (let k = Math.min(marker.length - 1, buf.length); k > 0; k--) {
    const at = buf.length - k;
    if (buf[at] === marker[0] && marker.compare(buf, at, buf.length, 0, k) === 0) return k;
  }
  return 0;
}

/**
 * Finds the markers in the bytes read from a port and yields the stream between them. Pure
 * (no I/O), so that its handling of hostile input is testable on its own.
 */
export class MarkerMatcher {
  readonly #marker: Buffer;
  #phase: 'start' | 'data' | 'end';
  #held: Buffer = EMPTY;
  #skipped = 0;
  #after = 0;

  /** `awaitStart: false` for a reader that joins a stream already under way. */
  constructor(marker: Buffer, options: { awaitStart?: boolean } = {}) {
    if (marker.length !== MARKER_SIZE) throw new RangeError(`a marker has ${MARKER_SIZE} bytes`);
    this.#marker = Buffer.from(marker);
    this.#phase = options.awaitStart === false ? 'data' : 'start';
  }

  /** True once the end marker was seen. */
  get ended(): boolean {
    return this.#phase === 'end';
  }

  /** True once the start marker was seen (or was not awaited). */
  get started(): boolean {
    return this.#phase !== 'start';
  }

  /** Bytes discarded before the start marker. */
  get skipped(): number {
    return this.#skipped;
  }

  /** Bytes discarded after the end marker. */
  get after(): number {
    return this.#after;
  }

  /**
   * Feeds bytes read from the port; returns the stream bytes they release (views of `chunk`
   * where possible). Throws {@link AgentProtocolError} when more than
   * {@link MAX_BEFORE_START} bytes precede the start marker.
   */
  push(chunk: Buffer): Buffer[] {
    if (this.#phase === 'end') {
      this.#after += chunk.length;
      return [];
    }
    let buf = this.#held.length > 0 ? Buffer.concat([this.#held, chunk]) : chunk;
    this.#held = EMPTY;
    if (this.#phase === 'start') {
      const at = buf.indexOf(this.#marker);
      const skipped = at < 0 ? buf.length - partialTail(buf, this.#marker) : at;
      this.#skipped += skipped;
      if (this.#skipped > MAX_BEFORE_START) {
        throw new AgentProtocolError(`more than ${MAX_BEFORE_START} bytes came before the start marker of a direct stream`);
      }
      if (at < 0) {
        this.#held = Buffer.from(buf.subarray(skipped));
        return [];
      }
      this.#phase = 'data';
      buf = buf.subarray(at + MARKER_SIZE);
    }
    const at = buf.indexOf(this.#marker);
    if (at >= 0) {
      this.#phase = 'end';
      this.#after += buf.length - at - MARKER_SIZE;
      return at > 0 ? [buf.subarray(0, at)] : [];
    }
    const keep = partialTail(buf, this.#marker);
    if (keep > 0) this.#held = Buffer.from(buf.subarray(buf.length - keep));
    return buf.length > keep ? [buf.subarray(0, buf.length - keep)] : [];
  }

  /**
   * The port closed without an end marker: returns the held-back bytes, which are stream
   * bytes after all (nothing before the start marker is).
   */
  finish(): Buffer {
    const rest = this.#phase === 'data' ? this.#held : EMPTY;
    this.#held = EMPTY;
    return rest;
  }
}

/** Options of {@link DirectStreamReadable}. */
export interface DirectStreamOptions {
  /** For messages, e.g. `stdout of container "web"`. */
  label: string;
  /** Skip everything up to the start marker (default true); false to join a stream under way. */
  awaitStart?: boolean;
}

/**
 * A container's stdout or stderr read from its stream port. It ends after the end marker
 * (the container's init was reaped), and fails with {@link AgentClosedError} when the port
 * closes first (the VM stopped). Backpressure is the port's: while the consumer does not read,
 * the socket is not read, QEMU stops taking the guest's buffers and the container's `write()`
 * blocks. Destroying it closes the connection to the port (see docs/sandbox.md for what
 * another reader would get).
 */
export class DirectStreamReadable extends Readable {
  readonly #socket: net.Socket;
  readonly #matcher: MarkerMatcher;
  readonly #label: string;

  /** @internal */
  constructor(socket: net.Socket, marker: Buffer, options: DirectStreamOptions) {
    super({ highWaterMark: 256 * 1024 });
    this.#socket = socket;
    this.#matcher = new MarkerMatcher(marker, options.awaitStart === false ? { awaitStart: false } : {});
    this.#label = options.label;
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('end', () => this.#onClose());
    socket.on('close', () => this.#onClose());
    socket.on('error', (error) => this.destroy(new AgentClosedError(`${this.#label}: the stream port failed: ${error.message}`, { cause: error })));
  }

  /** True once the start marker arrived: the agent opened the port for this stream. */
  get started(): boolean {
    return this.#matcher.started;
  }

  #onData(chunk: Buffer): void {
    if (this.destroyed || this.#matcher.ended) return;
    let parts: Buffer[];
    try {
      parts = this.#matcher.push(chunk);
    } catch (error) {
      this.destroy(error as Error);
      return;
    }
    let more = true;
    for (const part of parts) more = this.push(part) && more;
    if (this.#matcher.ended) {
      this.push(null);
      this.#socket.destroy();
    } else if (!more) {
      this.#socket.pause();
    }
  }

  #onClose(): void {
    if (this.destroyed || this.#matcher.ended) return;
    const rest = this.#matcher.finish();
    if (rest.length > 0) this.push(rest);
    this.destroy(new AgentClosedError(`${this.#label}: the stream port closed before the output ended (did the VM stop?)`));
  }

  override _read(): void {
    this.#socket.resume();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#socket.destroy();
    callback(error);
  }
}

/**
 * Connects to the unix socket QEMU binds to a stream port and returns the stream. The socket
 * is open when this resolves; `onClose` runs once it is closed, whatever the reason.
 */
export async function connectDirectStream(
  socketPath: string,
  marker: Buffer,
  options: DirectStreamOptions & { signal?: AbortSignal; onClose?: () => void },
): Promise<DirectStreamReadable> {
  const socket = net.createConnection({ path: socketPath });
  if (options.onClose) socket.once('close', options.onClose);
  await new Promise<void>((resolve, reject) => {
    const onAbort = (): void => {
      socket.destroy();
      reject(new AbortError(`connecting to ${socketPath}`, { cause: options.signal?.reason }));
    };
    if (options.signal?.aborted) return onAbort();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    socket.once('connect', () => {
      options.signal?.removeEventListener('abort', onAbort);
      resolve();
    });
    socket.once('error', (error) => {
      options.signal?.removeEventListener('abort', onAbort);
      reject(new AgentClosedError(`cannot connect to the stream port at ${socketPath}: ${error.message}`, { cause: error }));
    });
  });
  return new DirectStreamReadable(socket, marker, options);
}
