/**
 * A process's stdio as Node streams, with the protocol's credit-based flow control: the agent
 * may send at most the credit it holds on a stream, and gets more only when the consumer of the
 * Readable has taken the data, so a slow reader stops the pipe in the guest (and the process
 * writing it) instead of filling memory. The same holds for stdin in the other direction, where
 * the connection's transport is a second bound: stdin bytes wait while it holds more than its
 * bound (a guest that grants credit but does not read), so the host keeps at most the Writable's
 * highWaterMark, one chunk in progress and the transport's bound for a stdin stream.
 *
 * @module
 */
import { Readable, Writable } from 'node:stream';
import { AgentProtocolError } from './errors.js';
import { INITIAL_WINDOW, MAX_DATA_CHUNK, MAX_WINDOW } from './framing.js';

/** What a stdio stream needs from its connection. @internal */
export interface StdioLink {
  /** Sends stdio bytes on the stream. */
  data(payload: Buffer): void;
  /** Sends a credit increment. */
  window(increment: number): void;
  /** Sends the end-of-stream flag (EOF for stdin, detach for stdout/stderr). */
  close(): void;
  /** Forgets the stream (no more frames are routed to it). */
  release(): void;
  /** Reports a protocol violation by the agent (closes the connection). */
  violation(error: AgentProtocolError): void;
  /** True while the connection's transport is over its bound: send nothing but what must go. */
  congested(): boolean;
  /** Asks for one {@link StdioEndpoint.onWritable} call once the transport has room again. */
  waitWritable(): void;
}

/** Frames routed to a stream by the client. @internal */
export interface StdioEndpoint {
  onData(payload: Buffer): void;
  onWindow(increment: number): void;
  onClose(): void;
  /** The connection ended: `null` after a deliberate close, else the failure. */
  onError(error: Error | null): void;
  /** The transport has room again (after {@link StdioLink.waitWritable}). */
  onWritable(): void;
}

/**
 * stdout or stderr of a process in the guest. It ends when the process's pipe is drained and
 * closed (the process and every child holding it exited). Destroying it detaches: the agent
 * stops sending, and what the process writes afterwards stays in the guest pipe for the next
 * reader.
 */
export class StdioReadable extends Readable {
  // A StdioEndpoint of the client (checked where it registers it), not in `implements`: those
  // members are @internal, and the typings leave them out (stripInternal).
  #link: StdioLink;
  #credit = INITIAL_WINDOW; // what the agent may still send
  #unacked = 0; // bytes received and not granted back yet (what is still buffered included)
  #ended = false;

  /** @internal */
  constructor(link: StdioLink) {
    super({ highWaterMark: INITIAL_WINDOW / 2 });
    this.#link = link;
  }

  // The consumer wants more than is buffered.
  override _read(): void {
    this.#grant(true);
  }

  // Every way of consuming a Readable (read(), flowing mode, pipe, async iteration) goes through
  // read(): after it, the bytes taken out of the buffer may be granted back.
  override read(size?: number): ReturnType<Readable['read']> {
    const chunk: unknown = super.read(size);
    this.#grant(false);
    return chunk;
  }

  /**
   * Grants back the bytes the consumer has taken (received and no longer buffered), never
   * those still buffered: what the agent may send plus what the host holds is at most the
   * window. In batches of a quarter window, or at once when the buffer is empty or the consumer
   * waits for more while the agent's credit runs low (it could not fill the request otherwise).
   */
  #grant(wanting: boolean): void {
    if (this.#ended || this.destroyed) return;
    const consumed = this.#unacked - this.readableLength;
    if (consumed <= 0) return;
    if (consumed >= INITIAL_WINDOW / 4 || this.readableLength === 0 || (wanting && this.#credit < INITIAL_WINDOW / 4)) {
      // A guest that does not read its end would otherwise have credit frames pile up on the
      // host, one per data frame it sends: the grant waits (and grows) until there is room.
      if (this.#link.congested()) return this.#link.waitWritable();
      this.#link.window(consumed);
      this.#credit += consumed;
      this.#unacked -= consumed;
    }
  }

  /** @internal */
  onData(payload: Buffer): void {
    if (this.#ended) return this.#link.violation(new AgentProtocolError('data after the end of a stdio stream'));
    if (payload.length > this.#credit) {
      return this.#link.violation(
        new AgentProtocolError(`the agent sent ${payload.length} bytes with a credit of ${this.#credit}`),
      );
    }
    this.#credit -= payload.length;
    this.#unacked += payload.length;
    if (this.destroyed) return;
    // No copy: the payload is a view of the chunk the transport handed us, which nobody reuses.
    this.push(payload);
  }

  /** @internal */
  onWindow(): void {
    this.#link.violation(new AgentProtocolError('window update on an output stream'));
  }

  /** @internal */
  onWritable(): void {
    this.#grant(true);
  }

  /** @internal */
  onClose(): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#link.release();
    this.push(null);
  }

  /** @internal */
  onError(error: Error | null): void {
    this.#ended = true;
    if (error) this.destroy(error);
    else this.destroy();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (!this.#ended) {
      this.#ended = true;
      this.#link.close();
      this.#link.release();
    }
    callback(error);
  }
}

/**
 * stdin of a process in the guest. `end()` closes the process's stdin (EOF; on a terminal, a
 * ^D is sent). Writes wait while the agent's credit is used up, or while the connection's
 * transport holds more than its bound (the guest is not reading), so `write()` returns false
 * and `drain` follows, as with any Node stream: a writer that respects backpressure (`pipe`,
 * `pipeline`, awaiting write callbacks) stops. Once the process no longer reads its stdin (it
 * exited or closed it), further writes are discarded silently, as a closed pipe would.
 */
export class StdioWritable extends Writable {
  // A StdioEndpoint of the client (checked where it registers it), not in `implements`: those
  // members are @internal, and the typings leave them out (stripInternal).
  #link: StdioLink;
  #credit = INITIAL_WINDOW; // what we may still send
  #pending: { data: Buffer; callback: (error?: Error | null) => void } | null = null;
  #remoteClosed = false;
  #done = false;

  /** @internal */
  constructor(link: StdioLink) {
    super({ highWaterMark: MAX_DATA_CHUNK });
    this.#link = link;
  }

  /** True once the agent said the process no longer reads stdin. */
  get remoteClosed(): boolean {
    return this.#remoteClosed;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.#pending = { data: chunk, callback };
    this.#flush();
  }

  #flush(): void {
    const pending = this.#pending;
    if (!pending) return;
    if (this.#remoteClosed || this.#done) {
      this.#pending = null;
      pending.callback();
      return;
    }
    while (pending.data.length > 0 && this.#credit > 0) {
      if (this.#link.congested()) return this.#link.waitWritable();
      const n = Math.min(this.#credit, MAX_DATA_CHUNK, pending.data.length);
      this.#link.data(pending.data.subarray(0, n));
      this.#credit -= n;
      pending.data = pending.data.subarray(n);
    }
    if (pending.data.length > 0) return; // waits for credit (onWindow)
    // Sent, but the callback waits until the transport has room: the writer stops there and
    // not with its next chunk, so what it wrote is accounted in writableLength until then.
    if (this.#link.congested()) return this.#link.waitWritable();
    this.#pending = null;
    pending.callback();
  }

  /** @internal */
  onWritable(): void {
    this.#flush();
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.#finish();
    callback();
  }

  #finish(): void {
    if (this.#done) return;
    this.#done = true;
    if (!this.#remoteClosed) this.#link.close();
    this.#link.release();
  }

  /** @internal */
  onData(): void {
    this.#link.violation(new AgentProtocolError('data frame on a stdin stream'));
  }

  /** @internal */
  onWindow(increment: number): void {
    if (this.#credit + increment > MAX_WINDOW) {
      return this.#link.violation(new AgentProtocolError(`stdin credit grown beyond ${MAX_WINDOW} bytes`));
    }
    this.#credit += increment;
    this.#flush();
  }

  /** @internal */
  onClose(): void {
    this.#remoteClosed = true;
    this.#flush();
  }

  /** @internal */
  onError(error: Error | null): void {
    this.#done = true;
    if (error) this.destroy(error);
    else this.destroy();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    const pending = this.#pending;
    this.#pending = null;
    this.#finish();
    // A write still waiting for credit did not go out: say so when the connection failed (a
    // destroy() by the user, without an error, drops it quietly as Node's streams do).
    pending?.callback(error);
    callback(error);
  }
}

/** The stdio streams of one process, as returned by {@link AgentClient.openStdio}. */
export interface ProcessStdio {
  stdin: StdioWritable | null;
  stdout: StdioReadable | null;
  stderr: StdioReadable | null;
}
