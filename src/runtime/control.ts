/**
 * The monitor's control socket: one JSON request per connection, one JSON answer
 * (`{"ok":true,...}` or `{"error":"..."}`), newline-terminated. The socket is in the runtime
 * root (`sock/`, mode 0700), reachable by root only.
 *
 * @module
 */
import net from 'node:net';
import { RuntimeError } from './log.js';

/** What a command asks the monitor. */
export type ControlRequest =
  | { op: 'start' }
  | { op: 'kill'; signal: number; all: boolean }
  | { op: 'delete'; force: boolean }
  | { op: 'pause' }
  | { op: 'resume' }
  | { op: 'update'; resources: Record<string, unknown> };

/** The monitor's answer. */
export interface ControlAnswer {
  ok?: boolean;
  error?: string;
}

/** Sends `request` to the monitor at `socket` and resolves with its answer (RuntimeError with the monitor's message). */
export function control(socket: string, request: ControlRequest, timeoutMs = 600_000): Promise<ControlAnswer> {
  return new Promise((resolve, reject) => {
    const conn = net.createConnection(socket);
    let text = '';
    const timer = setTimeout(() => conn.destroy(new RuntimeError(`the container's monitor did not answer ${request.op} within ${timeoutMs} ms`)), timeoutMs);
    conn.setEncoding('utf8');
    conn.on('connect', () => conn.write(`${JSON.stringify(request)}\n`));
    conn.on('data', (chunk: string) => {
      text += chunk;
    });
    conn.on('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (error.code === 'ENOENT' || error.code === 'ECONNREFUSED') reject(new RuntimeError('container not running', { cause: error }));
      else reject(error);
    });
    conn.on('end', () => {
      clearTimeout(timer);
      const line = text.split('\n')[0] ?? '';
      let answer: ControlAnswer;
      try {
        answer = JSON.parse(line) as ControlAnswer;
      } catch {
        reject(new RuntimeError(`the container's monitor went away during ${request.op}`));
        return;
      }
      if (answer.error !== undefined) reject(new RuntimeError(answer.error));
      else resolve(answer);
    });
  });
}

/** Serves requests on `socket` (which must not exist); `handle` answers each. */
/** `handle` may resolve with a function to call once the answer is sent (e.g. to exit). */
export function serveControl(socket: string, handle: (request: ControlRequest) => Promise<(() => void) | void>): Promise<net.Server> {
  const server = net.createServer((conn) => {
    let text = '';
    conn.setEncoding('utf8');
    conn.on('error', () => undefined);
    conn.on('data', (chunk: string) => {
      text += chunk;
      const nl = text.indexOf('\n');
      if (nl < 0) {
        if (text.length > 1 << 20) conn.destroy();
        return;
      }
      conn.removeAllListeners('data');
      let request: ControlRequest;
      try {
        request = JSON.parse(text.slice(0, nl)) as ControlRequest;
      } catch {
        conn.end(`${JSON.stringify({ error: 'bad request' })}\n`);
        return;
      }
      handle(request).then(
        (after) => conn.end(`${JSON.stringify({ ok: true })}\n`, () => after?.()),
        (error: unknown) => conn.end(`${JSON.stringify({ error: error instanceof Error ? error.message : String(error) })}\n`),
      );
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(socket, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}
