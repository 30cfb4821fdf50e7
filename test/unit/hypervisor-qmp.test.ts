import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AbortError, TimeoutError } from '../../src/errors.js';
import { QmpError, QmpProtocolError } from '../../src/hypervisor/errors.js';
import { QmpClient, type QmpEvent } from '../../src/hypervisor/qemu/qmp.js';

import { GREETING } from './hypervisor-fake-qmp.js';

/** A scripted QMP server: `onCommand` answers each command (or not). */
interface FakeServer {
  socket: string;
  received: Record<string, unknown>[];
  peer: Promise<net.Socket>;
  close(): Promise<void>;
}

let dir: string;
let servers: FakeServer[] = [];
let clients: QmpClient[] = [];

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-qmp-'));
});
afterEach(async () => {
  for (const c of clients) c.close();
  for (const s of servers) await s.close();
  clients = [];
  servers = [];
  fs.rmSync(dir, { recursive: true, force: true });
});

function fakeServer(
  onCommand: (message: Record<string, unknown>, peer: net.Socket) => void = (m, peer) => {
    peer.write(`${JSON.stringify({ return: {}, id: m['id'] })}\r\n`);
  },
  greeting = GREETING,
): FakeServer {
  const socket = path.join(dir, `qmp-${servers.length}.sock`);
  const received: Record<string, unknown>[] = [];
  const peers: net.Socket[] = [];
  let gotPeer: (s: net.Socket) => void = () => undefined;
  const peer = new Promise<net.Socket>((resolve) => (gotPeer = resolve));
  const server = net.createServer((conn) => {
    peers.push(conn);
    gotPeer(conn);
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
  server.listen(socket);
  const fake: FakeServer = {
    socket,
    received,
    peer,
    close: () =>
      new Promise<void>((resolve) => {
        for (const p of peers) p.destroy();
        server.close(() => resolve());
      }),
  };
  servers.push(fake);
  return fake;
}

async function connect(server: FakeServer, options: Parameters<typeof QmpClient.connect>[1] = {}): Promise<QmpClient> {
  await new Promise((r) => setTimeout(r, 10));
  const client = await QmpClient.connect(server.socket, options);
  clients.push(client);
  return client;
}

/** Answers commands by name; `qmp_capabilities` always succeeds. */
function scripted(answers: Record<string, (m: Record<string, unknown>, peer: net.Socket) => void>) {
  return (m: Record<string, unknown>, peer: net.Socket): void => {
    const handler = answers[m['execute'] as string];
    if (handler) handler(m, peer);
    else peer.write(`${JSON.stringify({ return: {}, id: m['id'] })}\r\n`);
  };
}

describe('QmpClient', () => {
  it('reads the greeting and negotiates capabilities first', async () => {
    const server = fakeServer();
    const client = await connect(server);
    expect(client.greeting?.version.qemu).toEqual({ micro: 22, minor: 2, major: 7 });
    expect(server.received).toEqual([{ execute: 'qmp_capabilities', id: 1 }]);
  });

  it('returns results and maps errors to QmpError with class and desc', async () => {
    const server = fakeServer(
      scripted({
        'query-status': (m, p) => p.write(`${JSON.stringify({ return: { status: 'running', running: true }, id: m['id'] })}\r\n`),
        device_del: (m, p) => p.write(`${JSON.stringify({ error: { class: 'DeviceNotFound', desc: "Device 'x' not found" }, id: m['id'] })}\r\n`),
      }),
    );
    const client = await connect(server);
    await expect(client.execute('query-status')).resolves.toEqual({ status: 'running', running: true });
    const error = await client.execute('device_del', { id: 'x' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QmpError);
    expect(error).toMatchObject({ code: 'ERR_VMPOD_QMP', command: 'device_del', qmpClass: 'DeviceNotFound', desc: "Device 'x' not found" });
    expect(server.received.at(-1)).toEqual({ execute: 'device_del', id: 3, arguments: { id: 'x' } });
  });

  it('matches answers by id even out of order', async () => {
    const held: Record<string, unknown>[] = [];
    const server = fakeServer(
      scripted({
        a: (m) => held.push(m),
        b: (m, p) => {
          p.write(`${JSON.stringify({ return: 'B', id: m['id'] })}\r\n`);
          p.write(`${JSON.stringify({ return: 'A', id: held[0]?.['id'] })}\r\n`);
        },
      }),
    );
    const client = await connect(server);
    const a = client.execute('a');
    const b = client.execute('b');
    await expect(Promise.all([a, b])).resolves.toEqual(['A', 'B']);
  });

  it('times out a command, drops its late answer and keeps working', async () => {
    let late: (() => void) | undefined;
    const server = fakeServer(
      scripted({
        slow: (m, p) => {
          late = () => p.write(`${JSON.stringify({ return: 'late', id: m['id'] })}\r\n`);
        },
      }),
    );
    const client = await connect(server);
    const error = await client.execute('slow', undefined, { timeoutMs: 50 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TimeoutError);
    late?.();
    await expect(client.execute('query-status')).resolves.toEqual({});
    expect(client.closed).toBe(false);
  });

  it('aborts a command with its AbortSignal', async () => {
    const server = fakeServer(scripted({ slow: () => undefined }));
    const client = await connect(server);
    const controller = new AbortController();
    const pending = client.execute('slow', undefined, { signal: controller.signal });
    controller.abort();
    await expect(pending).rejects.toBeInstanceOf(AbortError);
    await expect(client.execute('x', undefined, { signal: AbortSignal.abort() })).rejects.toBeInstanceOf(AbortError);
  });

  it('emits events and waits for the one matching a predicate', async () => {
    const server = fakeServer(
      scripted({
        device_del: (m, p) => {
          p.write(`${JSON.stringify({ return: {}, id: m['id'] })}\r\n`);
          // As QEMU does: first the virtio backend, then the device itself.
          p.write('{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "DEVICE_DELETED", "data": {"path": "/machine/peripheral/n1/virtio-backend"}}\r\n');
          p.write('{"timestamp": {"seconds": 1, "microseconds": 3}, "event": "DEVICE_DELETED", "data": {"device": "n1", "path": "/machine/peripheral/n1"}}\r\n');
        },
      }),
    );
    const client = await connect(server);
    const events: QmpEvent[] = [];
    client.on('event', (e) => events.push(e));
    const deleted = client.waitForEvent('DEVICE_DELETED', (data) => data.device === 'n1', { timeoutMs: 2000 });
    await client.execute('device_del', { id: 'n1' });
    const event = await deleted;
    expect(event.data).toEqual({ device: 'n1', path: '/machine/peripheral/n1' });
    expect(event.timestamp).toEqual({ seconds: 1, microseconds: 3 });
    expect(events.map((e) => e.event)).toEqual(['DEVICE_DELETED', 'DEVICE_DELETED']);
    await expect(client.waitForEvent('SHUTDOWN', () => true, { timeoutMs: 30 })).rejects.toBeInstanceOf(TimeoutError);
  });

  it('an error without id settles the oldest pending command', async () => {
    const server = fakeServer(scripted({ bad: (_m, p) => p.write('{"error": {"class": "GenericError", "desc": "JSON parse error"}}\r\n') }));
    const client = await connect(server);
    await expect(client.execute('bad')).rejects.toMatchObject({ qmpClass: 'GenericError', desc: 'JSON parse error' });
  });

  it.each([
    ['invalid JSON', '{"return": \r\n'],
    ['a JSON array', '[1,2,3]\r\n'],
    ['an unknown message', '{"hello": 1}\r\n'],
    ['a second greeting', GREETING],
  ])('closes the connection on %s, rejecting pending commands', async (_name, garbage) => {
    const server = fakeServer(scripted({ poke: (_m, p) => p.write(garbage) }));
    const client = await connect(server);
    const closed = new Promise<Error | undefined>((resolve) => client.once('close', resolve));
    const error = await client.execute('poke').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QmpProtocolError);
    expect(await closed).toBeInstanceOf(QmpProtocolError);
    expect(client.closed).toBe(true);
    await expect(client.execute('query-status')).rejects.toBeInstanceOf(QmpProtocolError);
  });

  it('bounds line length: an endless line is a protocol error, not unbounded memory', async () => {
    const server = fakeServer(scripted({ flood: (_m, p) => p.write('x'.repeat(256 * 1024)) }));
    const client = await connect(server, { maxLineBytes: 64 * 1024 });
    await expect(client.execute('flood')).rejects.toThrow(/exceeds the limit/);
    expect(client.closed).toBe(true);
  });

  it('rejects pending commands when the server goes away', async () => {
    const server = fakeServer(scripted({ hang: (_m, p) => p.destroy() }));
    const client = await connect(server);
    await expect(client.execute('hang')).rejects.toBeInstanceOf(QmpProtocolError);
  });

  it('times out when the server never greets, and rejects a bad greeting', async () => {
    const silent = fakeServer(undefined, '');
    await expect(connect(silent, { timeoutMs: 100 })).rejects.toBeInstanceOf(TimeoutError);
    const bad = fakeServer(undefined, '{"QMP": 1}\r\n');
    await expect(connect(bad, { timeoutMs: 1000 })).rejects.toBeInstanceOf(QmpProtocolError);
    const refused = path.join(dir, 'none.sock');
    await expect(QmpClient.connect(refused)).rejects.toMatchObject({ code: 'ERR_VMPOD_SYSTEM', errnoName: 'ENOENT', syscall: 'connect' });
  });

  it('sends commands carrying fds through sendmsg, intact and in order', async () => {
    const server = fakeServer();
    const client = await connect(server);
    const fd = fs.openSync('/dev/null', 'r');
    try {
      const results = await Promise.all([
        client.execute('getfd', { fdname: 'fd0' }, { fds: [fd] }),
        client.execute('query-status'),
        client.execute('add-fd', { 'fdset-id': 2 }, { fds: [fd, fd] }),
      ]);
      expect(results).toEqual([{}, {}, {}]);
    } finally {
      fs.closeSync(fd);
    }
    expect(server.received.slice(1)).toEqual([
      { execute: 'getfd', id: 2, arguments: { fdname: 'fd0' } },
      { execute: 'query-status', id: 3 },
      { execute: 'add-fd', id: 4, arguments: { 'fdset-id': 2 } },
    ]);
  });
});
