// A scripted QMP server on a unix socket, for unit tests of the QMP client and hotplug.
import net from 'node:net';

export const GREETING = '{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}\r\n';

export type Handler = (message: Record<string, unknown>, peer: net.Socket) => void;

export interface FakeQmp {
  readonly socket: string;
  /** Every command received, in order. */
  readonly received: Record<string, unknown>[];
  close(): Promise<void>;
}

/** Writes one answer line. */
export function reply(peer: net.Socket, id: unknown, value: unknown): void {
  peer.write(`${JSON.stringify({ return: value, id })}\r\n`);
}

export function replyError(peer: net.Socket, id: unknown, qmpClass: string, desc: string): void {
  peer.write(`${JSON.stringify({ error: { class: qmpClass, desc }, id })}\r\n`);
}

/** Answers by command name; unknown commands (and qmp_capabilities) get `{}`. */
export function scripted(answers: Record<string, Handler>): Handler {
  return (m, peer) => {
    const handler = answers[m['execute'] as string];
    if (handler) handler(m, peer);
    else reply(peer, m['id'], {});
  };
}

export async function startFakeQmp(socket: string, onCommand: Handler = scripted({}), greeting = GREETING): Promise<FakeQmp> {
  const received: Record<string, unknown>[] = [];
  const peers: net.Socket[] = [];
  const server = net.createServer((conn) => {
    peers.push(conn);
    conn.on('error', () => undefined);
    if (greeting) conn.write(greeting);
    let buffer = '';
    conn.on('data', (chunk) => {
      buffer += chunk.toString();
      let nl: number;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const message = JSON.parse(buffer.slice(0, nl)) as Record<string, unknown>;
        buffer = buffer.slice(nl + 1);
        received.push(message);
        onCommand(message, conn);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  return {
    socket,
    received,
    close: () =>
      new Promise<void>((resolve) => {
        for (const p of peers) p.destroy();
        server.close(() => resolve());
      }),
  };
}
