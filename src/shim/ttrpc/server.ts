/**
 * A ttRPC server: frames decoded per connection, each request handled as it comes (many at once
 * on one connection), answered with its own stream id in whatever order the handlers finish.
 *
 * What a peer can get wrong, and the answer (after containerd/ttrpc's own server):
 * - a frame over 4 MiB or any framing error: the connection is closed;
 * - a payload that is not a ttrpc.Request, or a request payload its method cannot decode:
 *   INVALID_ARGUMENT on that stream;
 * - an even stream id (client streams are odd): INVALID_ARGUMENT;
 * - a stream id already in flight: INVALID_ARGUMENT for the new one, the first goes on;
 * - an unknown service or method: UNIMPLEMENTED;
 * - a data frame or another type: ignored (this server has no streaming methods);
 * - more than `maxInFlight` requests at once on a connection: RESOURCE_EXHAUSTED for the excess.
 * A handler's deadline is the request's timeout_nano (its AbortSignal fires then, and the call is
 * answered DEADLINE_EXCEEDED if the handler has not answered); a closed connection aborts its calls.
 *
 * @module
 */
import fs from 'node:fs';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { CallContext } from '../proto/task-api.js';
import { decodeMessage, encodeMessage } from '../proto/index.js';
import type { ShimLog } from '../log.js';
import { silentLog } from '../log.js';
import { encodeFrame, FrameDecoder, MAX_PAYLOAD, MessageType } from './frame.js';
import { GrpcCode, statusOf } from './status.js';

/** A method: the request payload in, the response payload out (or a throw: its status). */
export type MethodHandler = (payload: Buffer, ctx: CallContext) => Promise<Uint8Array>;

/** The ttRPC metadata key containerd puts its namespace in (its namespaces package, TTRPCHeader). */
export const NAMESPACE_KEY = 'containerd-namespace-ttrpc';
/** The gRPC one, accepted too. */
export const GRPC_NAMESPACE_KEY = 'containerd-namespace';

interface DecodedRequest {
  service: string;
  method: string;
  payload: Buffer;
  timeoutNano: number;
  metadata: { key: string; value: string }[];
}

export interface TtrpcServerOptions {
  log?: ShimLog;
  /** Requests handled at once per connection; the excess is refused with RESOURCE_EXHAUSTED. Default 256. */
  maxInFlight?: number;
}

export class TtrpcServer {
  readonly #services = new Map<string, Map<string, MethodHandler>>();
  readonly #log: ShimLog;
  readonly #maxInFlight: number;
  readonly #connections = new Set<Duplex>();
  #server: net.Server | undefined;

  constructor(options: TtrpcServerOptions = {}) {
    this.#log = options.log ?? silentLog;
    this.#maxInFlight = options.maxInFlight ?? 256;
  }

  /** Adds (or replaces) a method of a service. */
  register(service: string, method: string, handler: MethodHandler): void {
    let methods = this.#services.get(service);
    if (methods === undefined) this.#services.set(service, (methods = new Map()));
    methods.set(method, handler);
  }

  /** Open connections. */
  get connectionCount(): number {
    return this.#connections.size;
  }

  /** Listens on a unix socket path (replacing a stale socket file there), mode 0600. */
  async listen(socketPath: string): Promise<void> {
    try {
      if (fs.lstatSync(socketPath).isSocket()) fs.unlinkSync(socketPath);
    } catch {
      // nothing there
    }
    const server = net.createServer({ allowHalfOpen: true }, (socket) => this.handleConnection(socket));
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    fs.chmodSync(socketPath, 0o600);
    server.on('error', (error) => this.#log.error(`ttrpc server: ${error.message}`));
  }

  /** Stops listening and closes every connection (their calls are aborted). */
  async close(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    for (const connection of this.#connections) connection.destroy();
    if (server !== undefined) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** Serves one connection (a socket, or any duplex stream in tests). */
  handleConnection(connection: Duplex): void {
    this.#connections.add(connection);
    const decoder = new FrameDecoder();
    const inFlight = new Map<number, AbortController>();
    let open = true;
    let peerEnded = false;

    const send = (streamId: number, code: number, message: string, payload?: Uint8Array): void => {
      if (!open || connection.destroyed || connection.writableEnded) return;
      let body: Buffer;
      try {
        body = encodeMessage('ttrpc.Response', code === GrpcCode.OK ? { status: { code: 0, message: '' }, payload: payload ?? Buffer.alloc(0) } : { status: { code, message } });
        if (body.length > MAX_PAYLOAD) {
          body = encodeMessage('ttrpc.Response', { status: { code: GrpcCode.RESOURCE_EXHAUSTED, message: `response of ${body.length} bytes is over the ttRPC maximum` } });
        }
      } catch (error) {
        body = encodeMessage('ttrpc.Response', { status: { code: GrpcCode.INTERNAL, message: `cannot encode the response: ${(error as Error).message}` } });
      }
      connection.write(encodeFrame({ streamId, type: MessageType.RESPONSE, flags: 0, payload: body }));
    };

    const finish = (): void => {
      if (!open) return;
      open = false;
      this.#connections.delete(connection);
      for (const controller of inFlight.values()) controller.abort(new Error('the ttRPC connection closed'));
      inFlight.clear();
    };

    connection.on('data', (chunk: Buffer) => {
      if (!open) return;
      let frames;
      try {
        frames = decoder.push(chunk);
      } catch (error) {
        this.#log.warn(`ttrpc: closing a connection: ${(error as Error).message}`);
        finish();
        connection.destroy();
        return;
      }
      for (const frame of frames) {
        if (frame.type !== MessageType.REQUEST) {
          this.#log.debug(`ttrpc: ignored a frame of type ${frame.type} on stream ${frame.streamId}`);
          continue;
        }
        const streamId = frame.streamId;
        if (streamId % 2 !== 1) {
          send(streamId, GrpcCode.INVALID_ARGUMENT, `stream id ${streamId} must be odd for a client's request`);
          continue;
        }
        if (inFlight.has(streamId)) {
          send(streamId, GrpcCode.INVALID_ARGUMENT, `stream id ${streamId} is already in use`);
          continue;
        }
        if (inFlight.size >= this.#maxInFlight) {
          send(streamId, GrpcCode.RESOURCE_EXHAUSTED, `more than ${this.#maxInFlight} requests at once on one connection`);
          continue;
        }
        let request: DecodedRequest;
        try {
          request = decodeMessage<DecodedRequest>('ttrpc.Request', frame.payload);
        } catch (error) {
          send(streamId, GrpcCode.INVALID_ARGUMENT, `unmarshal request error: ${(error as Error).message}`);
          continue;
        }
        const controller = new AbortController();
        inFlight.set(streamId, controller);
        void this.#dispatch(request, controller, (code, message, payload) => {
          if (inFlight.get(streamId) !== controller) return;
          inFlight.delete(streamId);
          send(streamId, code, message, payload);
          if (peerEnded && inFlight.size === 0) connection.end();
        });
      }
    });
    connection.on('error', (error) => this.#log.debug(`ttrpc: connection error: ${error.message}`));
    connection.on('close', finish);
    connection.on('end', () => {
      // The peer will send nothing more; answers already owed still go out before the end.
      peerEnded = true;
      if (inFlight.size === 0) connection.end();
    });
  }

  async #dispatch(request: DecodedRequest, controller: AbortController, answer: (code: number, message: string, payload?: Uint8Array) => void): Promise<void> {
    const handler = this.#services.get(request.service)?.get(request.method);
    if (handler === undefined) {
      const known = this.#services.has(request.service);
      answer(GrpcCode.UNIMPLEMENTED, known ? `method ${request.method} of ${request.service} is not implemented` : `service ${request.service} is not implemented`);
      return;
    }
    const metadata: Record<string, string[]> = {};
    for (const { key, value } of request.metadata) (metadata[key.toLowerCase()] ??= []).push(value);
    const ctx: CallContext = { signal: controller.signal, namespace: metadata[NAMESPACE_KEY]?.[0] ?? metadata[GRPC_NAMESPACE_KEY]?.[0], metadata };
    let timer: NodeJS.Timeout | undefined;
    let deadlineMs = 0;
    if (request.timeoutNano > 0) {
      deadlineMs = Math.max(1, Math.ceil(request.timeoutNano / 1e6));
      timer = setTimeout(() => {
        controller.abort(new Error(`deadline of ${deadlineMs} ms exceeded`));
        answer(GrpcCode.DEADLINE_EXCEEDED, `${request.service}/${request.method}: deadline of ${deadlineMs} ms exceeded`);
      }, Math.min(deadlineMs, 2 ** 31 - 1));
    }
    try {
      const payload = await handler(request.payload, ctx);
      answer(GrpcCode.OK, '', payload);
    } catch (error) {
      const status = statusOf(error);
      if (status.code === GrpcCode.UNKNOWN || status.code === GrpcCode.INTERNAL) this.#log.warn(`${request.service}/${request.method}: ${status.message}`);
      answer(status.code, status.message);
    } finally {
      if (timer !== undefined) clearTimeout(timer);
    }
  }
}
