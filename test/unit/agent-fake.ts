// A scripted stand-in for the guest agent over an in-memory Duplex, for the client's unit and
// fuzz tests: it decodes the client's frames and lets a test answer (or attack) with raw bytes.
import { Duplex } from 'node:stream';
import { FrameType, HEADER_SIZE, INITIAL_WINDOW, encodeFrame } from '../../src/agent/framing.js';

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

export class FakeAgent {
  readonly transport: Duplex;
  readonly requests: FakeRequest[] = [];
  readonly data: FakeData[] = [];
  onRequest: (request: FakeRequest) => void = () => {};
  #pending = Buffer.alloc(0);

  constructor(options: { answerHello?: boolean } = {}) {
    const answerHello = options.answerHello ?? true;
    this.transport = new Duplex({
      read() {},
      write: (chunk: Buffer, _encoding, callback) => {
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
          } else {
            this.data.push({ stream, flags, payload: Buffer.from(payload) });
          }
        }
        callback();
      },
    });
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
