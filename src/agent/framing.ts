/**
 * ttRPC-style framing (docs/agent-protocol.md, "Framing"): a 10-byte big-endian header
 * (u32 payload length, u32 stream id, u8 type, u8 flags) and the payload.
 *
 * {@link FrameDecoder} is the first thing every byte from the guest meets, so it trusts nothing:
 * it bounds the frame size, checks type, flags and stream id, and holds at most one frame.
 *
 * @module
 */
import { AgentProtocolError } from './errors.js';

export const HEADER_SIZE = 10;
/** Largest payload either side accepts (the agent's `kMaxPayload`). */
export const MAX_PAYLOAD = 1 << 20;
/** Largest stdio chunk in one data frame. */
export const MAX_DATA_CHUNK = 64 * 1024;
/** Credit each side starts with on every stdio stream. */
export const INITIAL_WINDOW = 1024 * 1024;
/** Largest credit a side may hold on one stream. */
export const MAX_WINDOW = 4 * 1024 * 1024;

export const FrameType = { Request: 1, Response: 2, Data: 3 } as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

/** Data frame flag: the sender will send no more data on this stream (EOF, or detach). */
export const FLAG_CLOSE = 0x01;
/** Data frame flag: the 4-byte payload is a credit increment, not stdio bytes. */
export const FLAG_WINDOW = 0x08;

export interface Frame {
  stream: number;
  type: FrameType;
  flags: number;
  payload: Buffer;
}

/** Encodes one frame (header and payload in one buffer). */
export function encodeFrame(stream: number, type: FrameType, flags: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  if (payload.length > MAX_PAYLOAD) throw new RangeError(`frame payload of ${payload.length} bytes exceeds ${MAX_PAYLOAD}`);
  const frame = Buffer.allocUnsafe(HEADER_SIZE + payload.length);
  frame.writeUInt32BE(payload.length, 0);
  frame.writeUInt32BE(stream >>> 0, 4);
  frame.writeUInt8(type, 8);
  frame.writeUInt8(flags, 9);
  payload.copy(frame, HEADER_SIZE);
  return frame;
}

/**
 * Incremental decoder of the frames the agent sends (responses and data). {@link push} throws
 * {@link AgentProtocolError} on the first invalid frame; the caller must then drop the
 * connection (there is no way to resynchronise a byte stream).
 */
export class FrameDecoder {
  #chunks: Buffer[] = [];
  #length = 0;

  /** Bytes buffered (at most one incomplete frame, so at most HEADER_SIZE + MAX_PAYLOAD + one chunk). */
  get buffered(): number {
    return this.#length;
  }

  /** Feeds received bytes; returns the frames they complete. */
  push(chunk: Buffer): Frame[] {
    if (chunk.length > 0) {
      this.#chunks.push(chunk);
      this.#length += chunk.length;
    }
    const frames: Frame[] = [];
    while (this.#length >= HEADER_SIZE) {
      const header = this.#peek(HEADER_SIZE);
      const length = header.readUInt32BE(0);
      const stream = header.readUInt32BE(4);
      const type = header.readUInt8(8);
      const flags = header.readUInt8(9);
      checkHeader(length, stream, type, flags);
      if (this.#length < HEADER_SIZE + length) break;
      const whole = this.#take(HEADER_SIZE + length);
      // checkHeader has made sure a window update's payload has its 4 bytes.
      const payload = whole.subarray(HEADER_SIZE);
      frames.push({ stream, type: type as FrameType, flags, payload });
    }
    return frames;
  }

  #peek(n: number): Buffer {
    const first = this.#chunks[0]!;
    if (first.length >= n) return first.subarray(0, n);
    return Buffer.concat(this.#chunks, Math.min(this.#length, n)).subarray(0, n);
  }

  #take(n: number): Buffer {
    const first = this.#chunks[0]!;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let off = 0;
      while (off < n) {
        const c = this.#chunks[0]!;
        const take = Math.min(c.length, n - off);
        c.copy(out, off, 0, take);
        off += take;
        if (take === c.length) this.#chunks.shift();
        else this.#chunks[0] = c.subarray(take);
      }
    }
    this.#length -= n;
    return out;
  }
}

function checkHeader(length: number, stream: number, type: number, flags: number): void {
  if (length > MAX_PAYLOAD) {
    throw new AgentProtocolError(`frame of ${length} bytes exceeds the maximum of ${MAX_PAYLOAD}`);
  }
  if (type === FrameType.Response) {
    // Stream 0 carries the agent's report of a protocol error before it hangs up.
    if (stream !== 0 && stream % 2 === 0) throw new AgentProtocolError(`response on even stream id ${stream}`);
    if (flags !== 0) throw new AgentProtocolError(`response with flags 0x${flags.toString(16)}`);
  } else if (type === FrameType.Data) {
    if (stream % 2 === 0) throw new AgentProtocolError(`data frame on even stream id ${stream}`);
    if ((flags & ~(FLAG_CLOSE | FLAG_WINDOW)) !== 0 || flags === (FLAG_CLOSE | FLAG_WINDOW)) {
      throw new AgentProtocolError(`data frame with flags 0x${flags.toString(16)}`);
    }
    if (flags & FLAG_WINDOW && length !== 4) {
      throw new AgentProtocolError(`window update on stream ${stream} has a ${length}-byte payload (expected 4)`);
    }
    if (flags & FLAG_CLOSE && length !== 0) {
      throw new AgentProtocolError(`close frame on stream ${stream} carries ${length} bytes`);
    }
  } else {
    throw new AgentProtocolError(`unexpected frame type ${type} from the agent`);
  }
}
