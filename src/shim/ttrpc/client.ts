/**
 * A ttRPC client over one connection: odd stream ids from 1, many calls at once, each answered
 * by its stream id. Used by the events publisher (containerd's Events service) and the tests.
 *
 * @module
 */
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { decodeMessage, encodeMessage } from '../proto/index.js';
import { encodeFrame, FrameDecoder, MessageType } from './frame.js';
import { GrpcCode, grpcCodeName, TtrpcError } from './status.js';

export interface CallOptions {
  /** Sent as timeout_nano; the call also rejects (DEADLINE_EXCEEDED) when it passes. */
  timeoutMs?: number;
  /** Request metadata (e.g. `containerd-namespace`). */
  metadata?: Record<string, string | string[]>;
  signal?: AbortSignal;
}

interface Pending {
  resolve: (payload: Buffer) => void;
  reject: (error: Error) => void;
}

export class TtrpcClient {
  readonly #connection: Duplex;
  readonly #pending = new Map<number, Pending>();
  readonly #decoder = new FrameDecoder();
  #nextStream = 1;
  #closed: Error | undefined;
  readonly #closeWaiters: (() => void)[] = [];

  /** A client over an open stream (use {@link TtrpcClient.connect} for a unix socket). */
  constructor(connection: Duplex) {
    this.#connection = connection;
    connection.on('data', (chunk: Buffer) => {
      let frames;
      try {
        frames = this.#decoder.push(chunk);
      } catch (error) {
        this.#fail(error as Error);
        connection.destroy();
        return;
      }
      for (const frame of frames) {
        if (frame.type !== MessageType.RESPONSE) continue;
        const pending = this.#pending.get(frame.streamId);
        if (pending === undefined) continue;
        this.#pending.delete(frame.streamId);
        let response: { status: { code: number; message: string } | null; payload: Buffer };
        try {
          response = decodeMessage('ttrpc.Response', frame.payload);
        } catch (error) {
          pending.reject(new TtrpcError(GrpcCode.INTERNAL, `invalid ttRPC response: ${(error as Error).message}`));
          continue;
        }
        const code = response.status?.code ?? 0;
        if (code !== GrpcCode.OK) pending.reject(new TtrpcError(code, response.status?.message || grpcCodeName(code)));
        else pending.resolve(response.payload);
      }
    });
    connection.on('error', (error) => this.#fail(error));
    connection.on('close', () => this.#fail(new TtrpcError(GrpcCode.UNAVAILABLE, 'ttRPC connection closed')));
  }

  /** Connects to a unix socket (`unix://` prefix allowed). */
  static connect(address: string, options: { timeoutMs?: number } = {}): Promise<TtrpcClient> {
    const socketPath = address.startsWith('unix://') ? address.slice('unix://'.length) : address;
    return new Promise((resolve, reject) => {
      const socket = net.connect(socketPath);
      const timer = options.timeoutMs === undefined ? undefined : setTimeout(() => {
        socket.destroy();
        reject(new TtrpcError(GrpcCode.UNAVAILABLE, `connect to ${socketPath}: no answer within ${options.timeoutMs} ms`));
      }, options.timeoutMs);
      socket.once('error', (error) => {
        if (timer !== undefined) clearTimeout(timer);
        reject(new TtrpcError(GrpcCode.UNAVAILABLE, `connect to ${socketPath}: ${error.message}`, { cause: error }));
      });
      socket.once('connect', () => {
        if (timer !== undefined) clearTimeout(timer);
        socket.removeAllListeners('error');
        resolve(new TtrpcClient(socket));
      });
    });
  }

  /** Whether the connection is gone (every later call rejects UNAVAILABLE). */
  get closed(): boolean {
    return this.#closed !== undefined;
  }

  /** Resolves when the connection closes. */
  whenClosed(): Promise<void> {
    if (this.#closed !== undefined) return Promise.resolve();
    return new Promise((resolve) => this.#closeWaiters.push(resolve));
  }

  /** Calls service/method with an encoded request; resolves with the encoded response. */
  call(service: string, method: string, payload: Uint8Array, options: CallOptions = {}): Promise<Buffer> {
    if (this.#closed !== undefined) return Promise.reject(new TtrpcError(GrpcCode.UNAVAILABLE, `ttRPC connection closed: ${this.#closed.message}`));
    const streamId = this.#nextStream;
    this.#nextStream = (this.#nextStream + 2) % 2 ** 32;
    const metadata: { key: string; value: string }[] = [];
    for (const [key, value] of Object.entries(options.metadata ?? {})) for (const v of Array.isArray(value) ? value : [value]) metadata.push({ key, value: v });
    const request = encodeMessage('ttrpc.Request', {
      service,
      method,
      payload: Buffer.from(payload),
      timeoutNano: options.timeoutMs === undefined ? 0 : options.timeoutMs * 1e6,
      metadata,
    });
    return new Promise<Buffer>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const onAbort = (): void => done(new TtrpcError(GrpcCode.CANCELLED, `${service}/${method} was cancelled`));
      const done = (error: Error | undefined, value?: Buffer): void => {
        if (timer !== undefined) clearTimeout(timer);
        options.signal?.removeEventListener('abort', onAbort);
        this.#pending.delete(streamId);
        if (error !== undefined) reject(error);
        else resolve(value!);
      };
      this.#pending.set(streamId, { resolve: (v) => done(undefined, v), reject: (e) => done(e) });
      if (options.timeoutMs !== undefined) {
        timer = setTimeout(() => done(new TtrpcError(GrpcCode.DEADLINE_EXCEEDED, `${service}/${method}: no answer within ${options.timeoutMs} ms`)), options.timeoutMs);
      }
      if (options.signal !== undefined) {
        if (options.signal.aborted) return onAbort();
        options.signal.addEventListener('abort', onAbort, { once: true });
      }
      try {
        this.#connection.write(encodeFrame({ streamId, type: MessageType.REQUEST, flags: 0, payload: request }));
      } catch (error) {
        done(new TtrpcError(GrpcCode.INVALID_ARGUMENT, (error as Error).message, { cause: error }));
      }
    });
  }

  /** Closes the connection; calls still waiting reject UNAVAILABLE. */
  close(): void {
    this.#connection.destroy();
    this.#fail(new TtrpcError(GrpcCode.UNAVAILABLE, 'ttRPC client closed'));
  }

  #fail(error: Error): void {
    if (this.#closed === undefined) this.#closed = error;
    for (const pending of this.#pending.values()) pending.reject(new TtrpcError(GrpcCode.UNAVAILABLE, `ttRPC connection lost: ${error.message}`, { cause: error }));
    this.#pending.clear();
    for (const waiter of this.#closeWaiters.splice(0)) waiter();
  }
}
