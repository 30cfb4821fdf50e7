// Hostile agents: a guest that stops answering, stops reading, grants credit without reading,
// trickles garbage, or answers with strings meant for the host's terminal. The host must give up
// on time (TimeoutError), stay bounded in memory, refuse what it would not accept from a user
// (AgentProtocolError), and end every case with the client closed and no timer left behind.
// Timings are asserted loosely: a deadline of 200 ms must fire within 2 s.
import { pipeline } from 'node:stream/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AgentClient, TRANSPORT_HIGH_WATER } from '../../src/agent/client.js';
import { AgentClosedError, AgentError, AgentProtocolError } from '../../src/agent/errors.js';
import { FrameType, HEADER_SIZE, MAX_DATA_CHUNK, MAX_PAYLOAD, encodeFrame } from '../../src/agent/framing.js';
import { MAX_ERROR_MESSAGE } from '../../src/agent/messages.js';
import type { StdioWritable } from '../../src/agent/stdio.js';
import { TimeoutError } from '../../src/errors.js';
import { FakeAgent, VALID_INFO, grantOnOffer, patternSource, settled, watchTimers } from './agent-fake.js';

const MiB = 1024 * 1024;
const DEADLINE = 200;
/** Loose bound on how long a call with DEADLINE may take to fail. */
const LOOSE = 2000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const immediate = () => new Promise((r) => setImmediate(r));

let timers: ReturnType<typeof watchTimers>;
let clients: AgentClient[];
let fakes: FakeAgent[];

beforeEach(() => {
  timers = watchTimers();
  clients = [];
  fakes = [];
});

afterEach(async () => {
  try {
    // Every case ends with its clients closed (by the case or by the protocol error)...
    for (const c of clients) expect(c.closed, 'client closed at the end of the case').toBe(true);
    for (const f of fakes) expect(f.transport.destroyed, 'transport destroyed').toBe(true);
    await immediate();
    // ... and nothing left on the clock: deadlines are cleared when calls settle or the
    // connection closes.
    expect(timers.pending(), 'timers left pending').toBe(0);
  } finally {
    for (const c of clients) c.close();
    timers.restore();
  }
});

function fakeAgent(options: { answerHello?: boolean } = {}): FakeAgent {
  const fake = new FakeAgent(options);
  fakes.push(fake);
  return fake;
}

async function connect(fake: FakeAgent, callTimeoutMs = DEADLINE): Promise<AgentClient> {
  const client = await AgentClient.connect(fake.transport, { callTimeoutMs });
  clients.push(client);
  return client;
}

/** Sends `bytes` one at a time, `delayMs` apart, until done or the client hung up. */
async function trickle(fake: FakeAgent, bytes: Buffer, delayMs: number): Promise<number> {
  let sent = 0;
  for (const byte of bytes) {
    if (fake.transport.destroyed) break;
    fake.send(Buffer.from([byte]));
    sent++;
    await sleep(delayMs);
  }
  return sent;
}

function header(length: number, stream: number, type: number, flags = 0): Buffer {
  const h = Buffer.alloc(HEADER_SIZE);
  h.writeUInt32BE(length >>> 0, 0);
  h.writeUInt32BE(stream >>> 0, 4);
  h[8] = type;
  h[9] = flags;
  return h;
}

/** Every call of the client but wait(), with arguments that pass its own validation. */
function everyCall(client: AgentClient): [string, () => Promise<unknown>][] {
  return [
    ['Ping', () => client.ping()],
    ['CreateContainer', () => client.createContainer({ id: 'c1', bundle: '/b' })],
    ['StartContainer', () => client.startContainer('c1')],
    ['Exec', () => client.exec({ containerId: 'c1', execId: 'e1', process: { args: ['true'] } })],
    ['OpenStdio', () => client.openStdio('c1', { stdin: true, stdout: true })],
    ['Signal', () => client.signal('c1', 'SIGTERM')],
    ['ResizeTty', () => client.resizeTty('c1', { rows: 24, cols: 80 })],
    ['Stats', () => client.stats('c1')],
    ['DeleteContainer', () => client.deleteContainer('c1', { force: true })],
    ['ListContainers', () => client.listContainers()],
    ['Mount', () => client.mount({ type: 'tmpfs', target: '/run/vmpod/t', timeoutMs: 0 })],
    ['FindDevice', () => client.findDevice({ pciPath: '02/00', timeoutMs: 0 })],
    ['Unmount', () => client.unmount('/run/vmpod/t')],
    ['SetTime', () => client.setTime()],
    ['ConfigureInterface', () => client.configureInterface({ mac: '02:00:00:00:00:01', name: 'eth0', timeoutMs: 0 })],
    ['RemoveInterface', () => client.removeInterface('02:00:00:00:00:01')],
    ['ListInterfaces', () => client.listInterfaces()],
    ['SetNetworkConfig', () => client.setNetworkConfig({ hostname: 'h' })],
    ['Shutdown', () => client.shutdown()],
  ];
}

describe('an agent that answers Hello, then nothing', () => {
  it('every call rejects with TimeoutError naming it, within its deadline', async () => {
    const fake = fakeAgent();
    const client = await connect(fake);
    const started = Date.now();
    const calls = everyCall(client).map(([method, call]) => ({ method, outcome: call().then(() => 'resolved', (e: unknown) => e) }));
    for (const { method, outcome } of calls) {
      const error = await outcome;
      expect(error, method).toBeInstanceOf(TimeoutError);
      expect(String(error), method).toContain(method);
    }
    expect(Date.now() - started).toBeLessThan(LOOSE);
    // The requests all went out: the guest got them and kept silent.
    expect(fake.requests.map((r) => r.method)).toEqual(['Hello', ...calls.map((c) => c.method)]);
    // wait() is the exception: no default deadline, only its own.
    const waiting = client.wait('c1');
    expect(await settled(waiting, 2 * DEADLINE)).toBe('pending');
    await expect(client.wait('c1', { timeoutMs: DEADLINE })).rejects.toBeInstanceOf(TimeoutError);
    expect(client.closed).toBe(false);
    client.close();
    await expect(waiting).rejects.toBeInstanceOf(AgentClosedError);
  });

  it('a call whose deadline passed is not answered late: the answer is dropped and the session goes on', async () => {
    const fake = fakeAgent();
    const client = await connect(fake);
    await expect(client.listContainers()).rejects.toBeInstanceOf(TimeoutError);
    fake.respond(fake.requests.at(-1)!.stream, { containers: [] });
    await immediate();
    expect(client.closed).toBe(false);
    fake.onRequest = (r) => fake.respond(r.stream, {});
    await client.ping();
    client.close();
  });
});

describe('an agent that never reads', () => {
  it('calls time out, requests stop at the transport bound, and close() completes', async () => {
    const fake = fakeAgent();
    const client = await connect(fake);
    fake.pauseReading();
    const started = Date.now();
    await expect(client.ping()).rejects.toBeInstanceOf(TimeoutError);
    await expect(client.openStdio('c1', { stdout: true })).rejects.toBeInstanceOf(TimeoutError);
    // Large requests: the transport takes about its bound, the rest wait in the client and are
    // dropped there at their deadline.
    const config = { ociVersion: '1.0.2', process: { args: ['sh'], env: ['X=' + 'x'.repeat(200_000)] } };
    const big = Array.from({ length: 20 }, (_, i) => client.createContainer({ id: `c${i}`, config }).catch((e: unknown) => e));
    await immediate();
    expect(fake.transport.writableLength).toBeLessThanOrEqual(TRANSPORT_HIGH_WATER + MAX_PAYLOAD + HEADER_SIZE);
    for (const e of await Promise.all(big)) expect(e).toBeInstanceOf(TimeoutError);
    expect(Date.now() - started).toBeLessThan(3 * LOOSE);
    let closeEvent = false;
    client.once('close', () => (closeEvent = true));
    client.close();
    expect(closeEvent).toBe(true);
    expect(fake.transport.destroyed).toBe(true);
  });

  it('stdin stalls within its credit and the transport bound, and close() ends it', async () => {
    const fake = fakeAgent();
    const client = await connect(fake);
    fake.onRequest = (r) => fake.respond(r.stream, {});
    const { stdin } = (await client.openStdio('c1', { stdin: true })) as { stdin: StdioWritable };
    fake.pauseReading();
    const source = patternSource(16 * MiB);
    const piped = pipeline(source.stream, stdin).then(
      () => 'finished',
      (e: unknown) => e,
    );
    await sleep(300);
    expect(source.produced()).toBeLessThan(4 * MiB);
    expect(fake.transport.writableLength + stdin.writableLength).toBeLessThanOrEqual(4 * MiB);
    await expect(client.ping()).rejects.toBeInstanceOf(TimeoutError);
    client.close();
    expect(await piped).not.toBe('finished'); // the pipe was cut, not completed
    expect(stdin.destroyed).toBe(true);
  });
});

describe('an agent that grants credit without reading', () => {
  it('stalls a 32 MiB stdin pipe at a few MiB on the host, and close() ends it', async () => {
    const fake = fakeAgent();
    const client = await connect(fake);
    fake.onRequest = (r) => fake.respond(r.stream, {});
    const { stdin } = (await client.openStdio('c1', { stdin: true })) as { stdin: StdioWritable };
    grantOnOffer(fake, fake.requests.at(-1)!.stream);
    fake.pauseReading();
    const source = patternSource(32 * MiB);
    const piped = pipeline(source.stream, stdin).then(
      () => 'finished',
      (e: unknown) => e,
    );
    let max = 0;
    for (let i = 0; i < 30; i++) {
      await sleep(10);
      max = Math.max(max, fake.transport.writableLength + stdin.writableLength);
    }
    expect(max).toBeLessThanOrEqual(4 * MiB);
    expect(fake.transport.writableLength).toBeLessThanOrEqual(TRANSPORT_HIGH_WATER + HEADER_SIZE + MAX_DATA_CHUNK);
    expect(source.produced()).toBeLessThan(8 * MiB);
    client.close();
    expect(await piped).not.toBe('finished');
  });
});

describe('an agent that trickles garbage', () => {
  it('a header announcing a 4 GiB frame, one byte at a time: refused as soon as the header is complete', async () => {
    const fake = fakeAgent();
    const client = await connect(fake, 5000);
    const pending = client.ping().catch((e: unknown) => e);
    const sent = await trickle(fake, Buffer.concat([header(0xfffffff0, 3, FrameType.Response), Buffer.alloc(64, 0x41)]), 5);
    const error = await pending;
    expect(error).toBeInstanceOf(AgentProtocolError);
    expect(String(error)).toMatch(/exceeds the maximum/);
    expect(sent).toBe(HEADER_SIZE); // nothing after the header was taken
    expect(client.closed).toBe(true);
  });

  it('a frame of the maximum size sent a byte at a time: the call times out, the client keeps only what arrived, and closes cleanly', async () => {
    const fake = fakeAgent();
    const client = await connect(fake);
    const started = Date.now();
    const pending = client.ping().catch((e: unknown) => e);
    const trickling = trickle(fake, Buffer.concat([header(MAX_PAYLOAD, 3, FrameType.Response), Buffer.alloc(1000, 0x20)]), 2);
    expect(await pending).toBeInstanceOf(TimeoutError);
    expect(Date.now() - started).toBeLessThan(LOOSE);
    expect(client.closed).toBe(false); // slow is not a violation
    client.close();
    expect(await trickling).toBeLessThan(1000 + HEADER_SIZE);
  });

  it('random bytes trickled in: only a protocol error or a timeout, never anything else', async () => {
    let next = 0x1234567;
    const random = () => ((next = (Math.imul(next, 1103515245) + 12345) >>> 0) >>> 16) & 0xff;
    for (let round = 0; round < 4; round++) {
      const fake = fakeAgent();
      const client = await connect(fake);
      const pending = client.ping().catch((e: unknown) => e);
      const garbage = Buffer.from(Array.from({ length: 40 }, random));
      const trickling = trickle(fake, garbage, 3);
      const error = await pending;
      expect(error instanceof AgentProtocolError || error instanceof TimeoutError, String(error)).toBe(true);
      client.close();
      await trickling;
    }
  });

  it('garbage during the handshake fails connect with a protocol error or its timeout', async () => {
    const huge = fakeAgent({ answerHello: false });
    const connecting = AgentClient.connect(huge.transport, { timeoutMs: 5000 }).catch((e: unknown) => e);
    await trickle(huge, header(0xffffffff, 1, FrameType.Response), 5);
    expect(await connecting).toBeInstanceOf(AgentProtocolError);
    expect(huge.transport.destroyed).toBe(true);

    const partial = fakeAgent({ answerHello: false });
    const started = Date.now();
    const slow = AgentClient.connect(partial.transport, { timeoutMs: DEADLINE }).catch((e: unknown) => e);
    const trickling = trickle(partial, header(MAX_PAYLOAD, 1, FrameType.Response), 30);
    expect(await slow).toBeInstanceOf(TimeoutError);
    expect(Date.now() - started).toBeLessThan(LOOSE);
    await trickling;
    expect(partial.transport.destroyed).toBe(true);
  });
});

describe('an agent that answers with strings meant for the host', () => {
  const container = (over: Record<string, unknown>) => ({
    id: 'c1',
    status: 'running',
    pid: 9,
    bundle: '/run/vmpod/b',
    rootfs: 'builtin',
    createdAt: 1,
    terminal: false,
    exit: null,
    execs: [],
    ...over,
  });

  async function answer(method: (c: AgentClient) => Promise<unknown>, result: unknown): Promise<unknown> {
    const fake = fakeAgent();
    const client = await connect(fake, 5000);
    fake.onRequest = (r) => fake.respond(r.stream, result);
    const outcome = await method(client).then(
      (value) => ({ value }),
      (error: unknown) => ({ error }),
    );
    if (!client.closed) client.close();
    return outcome;
  }

  it('container and exec ids in ListContainers go through the rule for user ids', async () => {
    const bad = ['\u001b[2J', 'web\u001b[2J', 'a\nb', 'x'.repeat(65), '..', 'a..b', '-x', '.x', '', 'a/b', 'c1\u202e', 'c\u0000'];
    for (const id of bad) {
      const outcome = (await answer((c) => c.listContainers(), { containers: [container({ id })] })) as { error?: unknown };
      expect(outcome.error, JSON.stringify(id)).toBeInstanceOf(AgentProtocolError);
      expect(String(outcome.error)).toMatch(/containers\[0\]\.id: must be a valid id/);
    }
    const exec = { execId: '\u001b]0;owned\u0007', pid: 3, status: 'running', terminal: false, exit: null };
    const outcome = (await answer((c) => c.listContainers(), { containers: [container({ execs: [exec] })] })) as { error?: unknown };
    expect(outcome.error).toBeInstanceOf(AgentProtocolError);
    // What the host itself accepts still passes.
    const ok = (await answer((c) => c.listContainers(), {
      containers: [container({ id: 'web-1.a_B', bundle: '', execs: [{ ...exec, execId: 'exec-0a1b' }] }), container({ id: '9', rootfs: '/run/vmpod/img' })],
    })) as { value?: unknown };
    expect(ok.value).toHaveLength(2);
  });

  it('other ids, paths and names from the guest are checked too', async () => {
    const stats = { containerId: 'c1', timestamp: 1, cpu: {}, memory: {}, pids: {} };
    const cases: [string, (c: AgentClient) => Promise<unknown>, unknown][] = [
      ['stats id', (c) => c.stats('c1'), { ...stats, containerId: 'c1\u001b[2J' }],
      ['bundle', (c) => c.listContainers(), { containers: [container({ bundle: 'relative\n' })] }],
      ['rootfs', (c) => c.listContainers(), { containers: [container({ rootfs: '/x\u0000' })] }],
      ['mount target', (c) => c.mount({ type: 'tmpfs', target: '/run/vmpod/t' }), { target: 'run/vmpod/t', device: null }],
      ['mount device', (c) => c.mount({ type: 'tmpfs', target: '/run/vmpod/t' }), { target: '/run/vmpod/t', device: '\u001b[2J' }],
      ['interface name', (c) => c.listInterfaces(), { hostname: 'h', interfaces: [{ name: 'eth/0', index: 1, mac: '', mtu: 1500, up: true, addresses: [], neighbors: [] }], routes: [] }],
      ['hostname', (c) => c.listInterfaces(), { hostname: 'h\u001b[2J', interfaces: [], routes: [] }],
      ['address', (c) => c.listInterfaces(), { hostname: 'h', interfaces: [{ name: 'eth0', index: 1, mac: '', mtu: 1500, up: true, addresses: ['\u001b[2J/24'], neighbors: [] }], routes: [] }],
      ['route dev', (c) => c.listInterfaces(), { hostname: 'h', interfaces: [], routes: [{ dst: 'default', family: 4, table: 254, scope: 0, protocol: 118, dev: 'a b' }] }],
      ['configured mac', (c) => c.configureInterface({ mac: '02:00:00:00:00:01', name: 'eth0' }), { name: 'eth0', index: 2, mac: 'ESC', mtu: 1500 }],
    ];
    for (const [what, call, result] of cases) {
      const outcome = (await answer(call, result)) as { error?: unknown };
      expect(outcome.error, what).toBeInstanceOf(AgentProtocolError);
    }
    const ok = (await answer((c) => c.listInterfaces(), {
      hostname: '(none)',
      interfaces: [{ name: 'lo', index: 1, mac: '', mtu: 65536, up: true, addresses: ['127.0.0.1/8', '::1/128'], neighbors: [] }],
      routes: [{ dst: '::/0', family: 6, table: 254, scope: 0, protocol: 2, gateway: 'fe80::1', dev: 'lo' }],
    })) as { value?: unknown };
    expect(ok.value).toMatchObject({ hostname: '(none)' });
  });

  it('the handshake: feature and controller names, the agent string and the state dir', async () => {
    const bad = [
      { features: ['containers', '\u001b[2J'] },
      { controllers: ['memory\n'] },
      { agent: 'vmpod-agent\u001b[31m' },
      { stateDir: 'run/vmpod' },
      { agent: 'x'.repeat(257) },
    ];
    for (const over of bad) {
      const fake = fakeAgent({ answerHello: false });
      fake.onRequest = (r) => fake.respond(r.stream, { ...VALID_INFO, ...over });
      const error = await AgentClient.connect(fake.transport, { timeoutMs: 5000 }).catch((e: unknown) => e);
      expect(error, JSON.stringify(over)).toBeInstanceOf(AgentProtocolError);
    }
  });

  it('error messages are defused and bounded, not trusted: escapes escaped, long ones cut; a bad errno is a violation', async () => {
    const fake = fakeAgent();
    const client = await connect(fake, 5000);
    const messages = ['container \u001b[2J\u001b]0;owned\u0007 "x"\nnot found\u202e', 'y'.repeat(200_000)];
    fake.onRequest = (r) => fake.respondError(r.stream, 'NOT_FOUND', messages.shift()!);
    const escaped = (await client.stats('c1').catch((e: unknown) => e)) as AgentError;
    expect(escaped).toBeInstanceOf(AgentError);
    expect(escaped.message).toBe('Stats: container \\x1b[2J\\x1b]0;owned\\x07 "x"\nnot found\\u202e');
    const long = (await client.stats('c1').catch((e: unknown) => e)) as AgentError;
    expect(long).toBeInstanceOf(AgentError);
    expect(long.message.length).toBeLessThanOrEqual(MAX_ERROR_MESSAGE + 100);
    expect(long.message).toMatch(/\[truncated\]$/);
    expect(client.closed).toBe(false);
    fake.onRequest = (r) =>
      fake.send(encodeFrame(r.stream, FrameType.Response, 0, Buffer.from(JSON.stringify({ error: { code: 'INTERNAL', message: 'x', errno: 'EIO\u001b[2J' } }))));
    await expect(client.ping()).rejects.toBeInstanceOf(AgentProtocolError);
    expect(client.closed).toBe(true);
  });
});
