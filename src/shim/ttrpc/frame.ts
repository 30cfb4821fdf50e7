/**
 * ttRPC framing (containerd/ttrpc): every message is a 10-byte big-endian header — u32 payload
 * length, u32 stream id, u8 type (1 request, 2 response, 3 data), u8 flags — then the payload.
 * A payload is at most 4 MiB; a header announcing more is a protocol error (the decoder throws
 * before it buffers anything of that body, so a hostile length never turns into an allocation).
 *
 * @module
 */
import { VmpodError } from '../../errors.js';

export const HEADER_LENGTH = 10;
/** ttRPC's maximum payload: 4 MiB. */
export const MAX_PAYLOAD = 4 << 20;

export const MessageType = { REQUEST: 1, RESPONSE: 2, DATA: 3 } as const;

/** Flags of a data frame (ttrpc streaming): the remote end closed, no data. */
export const Flags = { REMOTE_CLOSED: 1, REMOTE_OPEN: 2, NO_DATA: 4 } as const;

export interface Frame {
  streamId: number;
  type: number;
  flags: number;
  payload: Buffer;
}

/**
 * The peer broke the framing (e.g. announced a payload over 4 MiB); the connection must close.
 * `frames` are the complete frames the same `push` decoded before the bad header.
 */
export class FrameError extends VmpodError {
  constructor(
    message: string,
    readonly frames: Frame[] = [],
  ) {
    super('ERR_VMPOD_TTRPC_FRAME', message);
  }
}

/** A frame's bytes. Throws FrameError for a payload over MAX_PAYLOAD. */
export function encodeFrame(frame: Frame): Buffer {
  if (frame.payload.length > MAX_PAYLOAD) throw new FrameError(`payload of ${frame.payload.length} bytes is over the ttRPC maximum of ${MAX_PAYLOAD}`);
  const out = Buffer.allocUnsafe(HEADER_LENGTH + frame.payload.length);
  out.writeUInt32BE(frame.payload.length, 0);
  out.writeUInt32BE(frame.streamId >>> 0, 4);
  out.writeUInt8(frame.type & 0xff, 8);
  out.writeUInt8(frame.flags & 0xff, 9);
  frame.payload.copy(out, HEADER_LENGTH);
  return out;
}

/**
 * A streaming decoder: `push` any chunk (a header or body may be split anywhere, several frames
 * may share a chunk) and get the frames it completes. After a FrameError the decoder is spent.
 */
export class FrameDecoder {
  #chunks: Buffer[] = [];
  #buffered = 0;
  #header: { length: number; streamId: number; type: number; flags: number } | undefined;
  #failed: FrameError | undefined;

  /** Bytes held, waiting for the rest of a frame (never more than a header plus MAX_PAYLOAD). */
  get buffered(): number {
    return this.#buffered + (this.#header === undefined ? 0 : HEADER_LENGTH);
  }

  push(chunk: Buffer): Frame[] {
    if (this.#failed !== undefined) throw this.#failed;
    if (chunk.length > 0) {
      this.#chunks.push(chunk);
      this.#buffered += chunk.length;
    }
    const frames: Frame[] = [];
    for (;;) {
      if (this.#header === undefined) {
        if (this.#buffered < HEADER_LENGTH) break;
        const head = this.#take(HEADER_LENGTH);
        const length = head.readUInt32BE(0);
        if (length > MAX_PAYLOAD) {
          const message = `frame announces ${length} bytes, over the ttRPC maximum of ${MAX_PAYLOAD}`;
          this.#failed = new FrameError(message);
          this.#chunks = [];
          this.#buffered = 0;
          throw new FrameError(message, frames);
        }
        this.#header = { length, streamId: head.readUInt32BE(4), type: head.readUInt8(8), flags: head.readUInt8(9) };
      }
      if (this.#buffered < this.#header.length) break;
      const payload = this.#take(this.#header.length);
      frames.push({ streamId: this.#header.streamId, type: this.#header.type, flags: this.#header.flags, payload });
      this.#header = undefined;
    }
    return frames;
  }

  // Removes n buffered bytes (n <= buffered) and returns them as one Buffer (a copy when they span chunks).
  #take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.#chunks[0]!;
    if (first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
      this.#buffered -= n;
      return Buffer.from(out);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const chunk = this.#chunks[0]!;
      const part = Math.min(chunk.length, n - filled);
      chunk.copy(out, filled, 0, part);
      filled += part;
      if (part === chunk.length) this.#chunks.shift();
      else this.#chunks[0] = chunk.subarray(part);
    }
    this.#buffered -= n;
    return out;
  }
}
