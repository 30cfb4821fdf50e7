// The agent's own decoder and request validation against hostile input from a host session, case
// by case with the exact outcome each must have (docs/agent-protocol.md and the agent's source):
// an error response with its code and message, a dropped frame, or a protocol error (the report
// on stream 0, then the agent hangs up). Framing, data and window frames on open, closed and
// unknown streams (credit overflow, data beyond the window, bad flags), OCI spec fields of the
// wrong type deep inside process, mounts and linux.resources, direct streams with bad ports and
// markers, and junk; after every case a new session makes a real round trip.
import net from 'node:net';
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FrameDecoder, FrameType, encodeFrame, type Frame } from '../../src/agent/framing.js';
import { AgentClient } from '../../src/agent/client.js';
import { AGENT_BINARY, collect, haveAgent, haveBusybox, isRoot, minimalSpec, startHostAgent, uniqueId, type HostAgent } from './agent-host.js';

const ready = isRoot && haveAgent && haveBusybox;

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A raw session: sends bytes, collects decoded frames until the agent hangs up or `ms` pass. */
async function rawSession(socketPath: string, bytes: Buffer[], ms = 300): Promise<{ frames: Frame[]; hungUp: boolean }> {
  const socket = net.createConnection({ path: socketPath });
  const decoder = new FrameDecoder();
  const frames: Frame[] = [];
  let hungUp = false;
  socket.on('data', (chunk: Buffer) => {
    try {
      frames.push(...decoder.push(chunk));
    } catch {
      // The agent never sends invalid frames; a failure here fails the assertion below.
      frames.push({ stream: -1, type: FrameType.Response, flags: 0, payload: Buffer.alloc(0) });
    }
  });
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const closed = new Promise<void>((resolve) => socket.once('close', () => ((hungUp = true), resolve())));
  socket.on('error', () => undefined);
  for (const b of bytes) socket.write(b);
  await Promise.race([closed, new Promise((r) => setTimeout(r, ms))]);
  socket.destroy();
  return { frames, hungUp };
}

const request = (stream: number, body: unknown) => encodeFrame(stream, FrameType.Request, 0, Buffer.from(typeof body === 'string' ? body : JSON.stringify(body)));
const hello = request(1, { method: 'Hello', params: { version: 1 } });

/** Every method of the protocol (docs/agent-protocol.md, "Methods"). */
const METHODS = [
  'Hello', 'Ping', 'CreateContainer', 'StartContainer', 'Exec', 'OpenStdio', 'Signal', 'Wait', 'ResizeTty', 'Stats', 'PauseContainer', 'ResumeContainer', 'UpdateContainer', 'DeleteContainer',
  'ListContainers', 'Mount', 'FindDevice', 'Unmount', 'SetTime', 'ConfigureInterface', 'RemoveInterface', 'ListInterfaces', 'SetNetworkConfig', 'Shutdown',
];

/** The answers of a raw session, by stream id. */
function answersOf(frames: Frame[]): Map<number, { result?: Record<string, unknown>; error?: { code: string; message: string } }> {
  return new Map(frames.filter((f) => f.type === FrameType.Response && f.stream > 1).map((f) => [f.stream, JSON.parse(f.payload.toString())]));
}

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/u.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1]);
}

// --- exact outcomes, one case at a time --------------------------------------------------------
//
// Each case runs on a session of its own and has one expected outcome, from docs/agent-protocol.md
// and the agent's source: an error response with an exact code and message on the case's stream
// (the session then answers a Ping on the same connection), or a protocol error (the agent sends
// {"error":{"code":"INVALID_ARGUMENT","message":"protocol error: ..."}} on stream 0 and hangs up).
// After every case a new session makes a real round trip (Hello, Ping, ListContainers).

/** A session on the agent's socket that keeps the frames it got, in order. */
class RawSession {
  readonly frames: Frame[] = [];
  hungUp = false;
  #socket: net.Socket;
  #decoder = new FrameDecoder();
  #waiters: (() => void)[] = [];
  #broken: string | null = null;

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    socket.on('data', (chunk: Buffer) => {
      try {
        this.frames.push(...this.#decoder.push(chunk));
      } catch (e) {
        this.#broken ??= `the agent sent an invalid frame: ${(e as Error).message}`;
      }
      this.#wake();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.hungUp = true;
      this.#wake();
    });
  }

  static async open(socketPath: string): Promise<RawSession> {
    const socket = net.createConnection({ path: socketPath });
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    return new RawSession(socket);
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  send(...frames: Buffer[]): void {
    for (const f of frames) this.#socket.write(f);
  }

  /** Waits until `done()` holds, the agent hangs up, or `ms` pass. */
  async until(done: () => boolean, ms = 5000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!done() && !this.hungUp && Date.now() < deadline) {
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.max(1, deadline - Date.now()));
        this.#waiters.push(() => (clearTimeout(t), r()));
      });
    }
    if (this.#broken) throw new Error(this.#broken);
  }

  answer(stream: number): { result?: Record<string, unknown>; error?: { code: string; message: string; errno?: string } } | undefined {
    const f = this.frames.find((x) => x.type === FrameType.Response && x.stream === stream);
    return f ? JSON.parse(f.payload.toString()) : undefined;
  }

  async call(stream: number, body: unknown): Promise<ReturnType<RawSession['answer']>> {
    this.send(request(stream, body));
    await this.until(() => this.answer(stream) !== undefined);
    return this.answer(stream);
  }

  close(): void {
    this.#socket.destroy();
  }
}

type Expect =
  /** An error response on the case's stream, then the session answers a Ping. */
  | { error: string; message: string | RegExp }
  /** A protocol error: the report on stream 0, then the agent hangs up. */
  | { closed: string | RegExp }
  /** Nothing comes back for the frame (a late frame, dropped), and the session answers a Ping. */
  | { dropped: true };

interface Case {
  name: string;
  expect: Expect;
  /** Sends the case on a session that has done Hello on stream 1; returns the stream of the answer. */
  run(s: RawSession, ctx: CaseContext): Promise<number>;
}

interface CaseContext {
  agent: HostAgent;
  /** The next free request stream id of the session. */
  next(): number;
}

const matches = (text: string, want: string | RegExp) => (typeof want === 'string' ? text === want : want.test(text));

async function runCase(agent: HostAgent, c: Case): Promise<void> {
  const s = await RawSession.open(agent.socket);
  try {
    expect(await s.call(1, { method: 'Hello', params: { version: 1 } }), `${c.name}: Hello`).toMatchObject({ result: { version: 1 } });
    let stream = 3;
    const ctx: CaseContext = { agent, next: () => ((stream += 2), stream - 2) };
    const at = await c.run(s, ctx);
    const e = c.expect;
    if ('closed' in e) {
      await s.until(() => s.hungUp, 5000);
      const report = s.frames.filter((f) => f.stream === 0);
      expect(report, `${c.name}: one report on stream 0`).toHaveLength(1);
      const body = JSON.parse(report[0]!.payload.toString()) as { error: { code: string; message: string } };
      expect(body.error.code, `${c.name}: ${body.error.message}`).toBe('INVALID_ARGUMENT');
      expect(body.error.message.startsWith('protocol error: '), `${c.name}: ${body.error.message}`).toBe(true);
      expect(matches(body.error.message.slice('protocol error: '.length), e.closed), `${c.name}: "${body.error.message}" vs ${String(e.closed)}`).toBe(true);
      expect(s.hungUp, `${c.name}: the agent hangs up after a protocol error`).toBe(true);
      return;
    }
    if ('error' in e) {
      await s.until(() => s.answer(at) !== undefined);
      const answer = s.answer(at);
      expect(answer?.error, `${c.name}: ${JSON.stringify(answer)}`).toBeDefined();
      expect(answer!.error!.code, `${c.name}: ${answer!.error!.message}`).toBe(e.error);
      expect(matches(answer!.error!.message, e.message), `${c.name}: "${answer!.error!.message}" vs ${String(e.message)}`).toBe(true);
    }
    // The session goes on: a Ping on it round-trips, and nothing else came on stream 0.
    const ping = ctx.next();
    expect(await s.call(ping, { method: 'Ping', params: {} }), `${c.name}: Ping on the same session`).toEqual({ result: {} });
    expect(s.hungUp, `${c.name}: the session stays open`).toBe(false);
    expect(s.frames.filter((f) => f.stream === 0), `${c.name}: no protocol error`).toEqual([]);
    if ('dropped' in e) expect(s.answer(at), `${c.name}: nothing answers a dropped frame`).toBeUndefined();
  } finally {
    s.close();
  }
}

/** A real round trip on a new session: the agent is alive and serving. */
async function alive(agent: HostAgent, after: string): Promise<void> {
  expect(agent.process.exitCode, `the agent exited after ${after}`).toBeNull();
  const client = await AgentClient.connectUnix(agent.socket, { timeoutMs: 5000, callTimeoutMs: 5000 });
  try {
    await client.ping();
    expect(Array.isArray(await client.listContainers()), `ListContainers after ${after}`).toBe(true);
  } finally {
    client.close();
  }
}

const data = (stream: number, payload: Buffer, flags = 0) => encodeFrame(stream, FrameType.Data, flags, payload);
const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
};

/**
 * Creates and starts a container whose init reads nothing (sleep) with stdin, stdout and stderr
 * pipes, and attaches the three on this session; returns their stream ids.
 */
async function openStreams(s: RawSession, ctx: CaseContext): Promise<{ id: string; stdin: number; stdout: number; stderr: number }> {
  const id = uniqueId('rb');
  const create = await s.call(ctx.next(), {
    method: 'CreateContainer',
    params: { id, config: minimalSpec(['sleep', '1000']), rootfs: ctx.agent.rootfs, stdio: { stdin: true, stdout: true, stderr: true } },
  });
  expect(create?.result, JSON.stringify(create)).toBeDefined();
  const streams = { id, stdin: 0, stdout: 0, stderr: 0 };
  for (const fd of ['stdin', 'stdout', 'stderr'] as const) {
    streams[fd] = ctx.next();
    expect(await s.call(streams[fd], { method: 'OpenStdio', params: { containerId: id, fd } }), `OpenStdio ${fd}`).toEqual({ result: {} });
  }
  expect((await s.call(ctx.next(), { method: 'StartContainer', params: { id } }))?.result).toBeDefined();
  return streams;
}

/** Kills and deletes the containers the stream cases made (their sessions are gone). */
async function deleteAll(agent: HostAgent): Promise<void> {
  const client = await AgentClient.connectUnix(agent.socket, { timeoutMs: 5000 });
  try {
    for (const c of await client.listContainers()) {
      if (!c.id.startsWith('rb-')) continue;
      if (c.status === 'running') await client.signal(c.id, 'SIGKILL');
      await client.wait(c.id, { timeoutMs: 5000 });
      await client.deleteContainer(c.id);
    }
  } finally {
    client.close();
  }
}

const W = 1024 * 1024;
const MAX_WINDOW = 4 * W;
const MARKER = 'ff' + 'ab'.repeat(31);

/** A CreateContainer whose config has `patch` applied to minimalSpec (dotted path, set or delete). */
function withSpec(patch: (spec: Record<string, unknown>) => void, extra: Record<string, unknown> = {}): (s: RawSession, ctx: CaseContext) => Promise<number> {
  return async (s, ctx) => {
    const config = JSON.parse(JSON.stringify(minimalSpec(['true']))) as Record<string, unknown>;
    patch(config);
    const stream = ctx.next();
    s.send(request(stream, { method: 'CreateContainer', params: { id: uniqueId('rb'), config, rootfs: ctx.agent.rootfs, ...extra } }));
    return stream;
  };
}
const obj = (v: unknown) => v as Record<string, Record<string, unknown> & { [k: string]: unknown }>;
const direct = (d: unknown, extra: Record<string, unknown> = {}) => withSpec(() => undefined, { direct: d, ...extra });
const sendOnly = (...frames: Buffer[]) => async (s: RawSession, ctx: CaseContext) => {
  s.send(...frames);
  return ctx.next();
};

function cases(): Case[] {
  const list: Case[] = [
    // Framing: every one is a protocol error that ends the session.
    { name: '4 GiB length', expect: { closed: 'frame of 4294967295 bytes exceeds the maximum of 1048576' }, run: sendOnly(Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 3, 1, 0])) },
    { name: 'length 1 MiB + 1', expect: { closed: 'frame of 1048577 bytes exceeds the maximum of 1048576' }, run: sendOnly(Buffer.from([0, 0x10, 0, 1, 0, 0, 0, 3, 1, 0])) },
    { name: 'request id not above the last', expect: { closed: 'request stream id 1 is not above the last one (1)' }, run: sendOnly(request(1, { method: 'Ping', params: {} })) },
    { name: 'request ids going down', expect: { closed: 'request stream id 3 is not above the last one (5)' }, run: sendOnly(request(5, { method: 'Ping', params: {} }), request(3, { method: 'Ping', params: {} })) },
    { name: 'even request id', expect: { closed: 'stream id 4 is even (client stream ids are odd)' }, run: sendOnly(encodeFrame(4, FrameType.Request, 0, Buffer.from('{}'))) },
    { name: 'unknown frame type', expect: { closed: 'unexpected frame type 7' }, run: sendOnly(encodeFrame(3, 7 as FrameType, 0, Buffer.alloc(0))) },
    { name: 'a response from the host', expect: { closed: 'unexpected frame type 2' }, run: sendOnly(encodeFrame(3, FrameType.Response, 0, Buffer.from('{"result":{}}'))) },
    { name: 'data for a stream never opened', expect: { closed: 'data frame for unknown stream 5' }, run: sendOnly(data(5, Buffer.from('x'))) },
    { name: 'window for a stream never opened', expect: { closed: 'data frame for unknown stream 9' }, run: sendOnly(data(9, u32(1), 0x08)) },
    // Requests the agent refuses with an answer; the session goes on.
    { name: 'Hello twice with another version', expect: { error: 'FAILED_PRECONDITION', message: /version 99/ }, run: sendOnly(request(3, { method: 'Hello', params: { version: 99 } })) },
    { name: 'deep nesting', expect: { error: 'INVALID_ARGUMENT', message: /depth|nest/i }, run: sendOnly(request(3, '['.repeat(500_000) + ']'.repeat(500_000))) },
    { name: 'nesting within the bound, unknown field', expect: { error: 'INVALID_ARGUMENT', message: 'a: unknown field' }, run: sendOnly(request(3, '{"method":"Ping","params":' + '{"a":'.repeat(60) + '1' + '}'.repeat(60) + '}')) },
    { name: 'invalid UTF-8', expect: { error: 'INVALID_ARGUMENT', message: /UTF-8|JSON/i }, run: sendOnly(request(3, Buffer.from([0xc3, 0x28, 0xa0, 0xa1]).toString('latin1'))) },
    { name: 'not an object', expect: { error: 'INVALID_ARGUMENT', message: /object/ }, run: sendOnly(request(3, '[1,2]')) },
    { name: 'unknown method', expect: { error: 'UNIMPLEMENTED', message: 'unknown method "Nope"' }, run: sendOnly(request(3, { method: 'Nope', params: {} })) },

    // Data and window frames on open streams.
    {
      name: 'stdout window beyond the maximum credit',
      expect: { closed: `window grown beyond ${MAX_WINDOW} bytes` },
      run: async (s, ctx) => {
        const o = await openStreams(s, ctx);
        s.send(data(o.stdout, u32(MAX_WINDOW - W + 1), 0x08));
        return 0;
      },
    },
    {
      name: 'stdout window up to the maximum credit (accepted)',
      expect: { dropped: true },
      run: async (s, ctx) => {
        const o = await openStreams(s, ctx);
        s.send(data(o.stdout, u32(MAX_WINDOW - W), 0x08));
        return 0;
      },
    },
    {
      name: 'window with a 3-byte payload on stdout',
      expect: { closed: /window update with a payload of 3 bytes|window update on stream \d+ has a 3-byte payload/ },
      run: async (s, ctx) => {
        const o = await openStreams(s, ctx);
        s.send(data(o.stdout, Buffer.from([0, 0, 1]), 0x08));
        return 0;
      },
    },
    {
      name: 'data sent on stderr',
      expect: { closed: 'stdio data sent on an output stream' },
      run: async (s, ctx) => {
        const o = await openStreams(s, ctx);
        s.send(data(o.stderr, Buffer.from('x')));
        return 0;
      },
    },
    {
      name: 'window update on stdin',
      expect: { closed: 'window update on stdin' },
      run: async (s, ctx) => {
        const o = await openStreams(s, ctx);
        s.send(data(o.stdin, u32(10), 0x08));
        return 0;
      },
    },
    {
      name: 'stdin data beyond the window',
      expect: { closed: /^stdin data beyond the granted window \(\d+ > \d+\)$/ },
      run: async (s, ctx) => {
        const o = await openStreams(s, ctx);
        // The init never reads: the pipe takes what it holds, the agent grants that back, and
        // the rest waits without credit; three windows' worth cannot all fit.
        for (let i = 0; i < 3; i++) s.send(data(o.stdin, Buffer.alloc(W, 0x61)));
        s.send(data(o.stdin, Buffer.alloc(1, 0x61)));
        return 0;
      },
    },
    {
      name: 'stdin data with an undefined flag',
      expect: { closed: 'data frame with flags 0x2' },
      run: async (s, ctx) => {
        const o = await openStreams(s, ctx);
        s.send(data(o.stdin, Buffer.from('x'), 0x02));
        return 0;
      },
    },
    {
      name: 'close and window at once on stdout',
      expect: { closed: 'data frame with flags 0x9' },
      run: async (s, ctx) => {
        const o = await openStreams(s, ctx);
        s.send(data(o.stdout, u32(1), 0x09));
        return 0;
      },
    },
    {
      name: 'close with a payload on stdin',
      expect: { closed: 'close frame with 3 bytes' },
      run: async (s, ctx) => {
        const o = await openStreams(s, ctx);
        s.send(data(o.stdin, Buffer.from('abc'), 0x01));
        return 0;
      },
    },
    {
      name: 'data on a stdout stream the host detached from (dropped)',
      expect: { dropped: true },
      run: async (s, ctx) => {
        const o = await openStreams(s, ctx);
        s.send(data(o.stdout, Buffer.alloc(0), 0x01), data(o.stdout, u32(4096), 0x08));
        return 0;
      },
    },
    {
      name: 'stdin data after the host closed it (dropped)',
      expect: { dropped: true },
      run: async (s, ctx) => {
        const o = await openStreams(s, ctx);
        s.send(data(o.stdin, Buffer.alloc(0), 0x01), data(o.stdin, Buffer.from('late')));
        return 0;
      },
    },
    {
      name: 'data on the stream of an answered request (dropped)',
      expect: { dropped: true },
      run: async (s, ctx) => {
        const stream = ctx.next();
        await s.call(stream, { method: 'Ping', params: {} });
        s.send(data(stream, Buffer.from('x')));
        return 0;
      },
    },

    // Nested OCI spec fields of the wrong type, deep inside process, mounts and linux.resources.
    ...([
      ['process.args is a string', (c) => (obj(c).process!['args'] = 'sh'), 'process.args: must be an array of strings'],
      ['process.args[1] is a number', (c) => (obj(c).process!['args'] = ['echo', 5]), 'process.args[1]: must be a string'],
      ['process.env[0] has no =', (c) => (obj(c).process!['env'] = ['PATH']), 'process.env[0]: must be NAME=VALUE'],
      ['process.user.uid is a string', (c) => (obj(c).process!['user'] = { uid: '0', gid: 0 }), 'process.user.uid: must be an integer'],
      ['process.user.additionalGids[1] is negative', (c) => (obj(c).process!['user'] = { uid: 0, gid: 0, additionalGids: [1, -1] }), 'process.user.additionalGids[1]: must be a gid'],
      ['process.rlimits[0].hard is a string', (c) => (obj(c).process!['rlimits'] = [{ type: 'RLIMIT_NOFILE', hard: '1024', soft: 1024 }]), 'process.rlimits[0].hard: must be a non-negative integer'],
      ['process.rlimits[0] is a number', (c) => (obj(c).process!['rlimits'] = [7]), 'process.rlimits[0]: must be an object'],
      ['process.consoleSize.height is a string', (c) => (obj(c).process!['consoleSize'] = { height: 'x', width: 80 }), 'process.consoleSize.height: must be an integer'],
      ['process.capabilities.bounding is a string', (c) => (obj(c).process!['capabilities'] = { bounding: 'CAP_KILL' }), /^process\.capabilities\.bounding: /],
      ['process.noNewPrivileges is a string', (c) => (obj(c).process!['noNewPrivileges'] = 'yes'), 'process.noNewPrivileges: must be a boolean'],
      ['mounts[0].options is a string', (c) => ((obj(c).mounts as unknown as Record<string, unknown>[])[0]!['options'] = 'ro'), 'mounts[0].options: must be an array of strings'],
      ['mounts[1].destination is a number', (c) => ((obj(c).mounts as unknown as Record<string, unknown>[])[1]!['destination'] = 7), 'mounts[1].destination: must be a string'],
      ['mounts[2] is an array', (c) => ((obj(c).mounts as unknown as unknown[])[2] = []), /^mounts\[2\]: must be an object$/],
      ['linux.resources.memory.limit is a string', (c) => (obj(c).linux!['resources'] = { memory: { limit: '1G' } }), 'linux.resources.memory.limit: must be an integer'],
      ['linux.resources.cpu.shares is negative', (c) => (obj(c).linux!['resources'] = { cpu: { shares: -5 } }), 'linux.resources.cpu.shares: must be a non-negative integer'],
      ['linux.resources.pids is an array', (c) => (obj(c).linux!['resources'] = { pids: [] }), 'linux.resources.pids: must be an object'],
      ['linux.resources.hugepageLimits[0].limit is missing', (c) => (obj(c).linux!['resources'] = { hugepageLimits: [{ pageSize: '2MB' }] }), 'linux.resources.hugepageLimits[0].limit: is required'],
      ['linux.resources.unified value is a number', (c) => (obj(c).linux!['resources'] = { unified: { 'memory.max': 5 } }), 'linux.resources.unified.memory.max: must be a string'],
      ['linux.namespaces[0].type is a number', (c) => (obj(c).linux!['namespaces'] = [{ type: 1 }]), 'linux.namespaces[0].type: must be a string'],
    ] as [string, (c: Record<string, unknown>) => void, string | RegExp][]).map(
      ([name, patch, message]): Case => ({ name: `spec: ${name}`, expect: { error: 'INVALID_ARGUMENT', message }, run: withSpec(patch) }),
    ),

    // Direct streams: bad ports and markers.
    ...([
      ['marker in upper case', { stdout: { port: 'vmpod.stream.0', cookie: MARKER.toUpperCase() } }, 'direct.stdout.cookie: must be 64 lowercase hex digits (32 bytes)'],
      ['marker of 63 digits', { stdout: { port: 'vmpod.stream.0', cookie: MARKER.slice(1) } }, 'direct.stdout.cookie: must be 64 lowercase hex digits (32 bytes)'],
      ['marker of 65 digits', { stderr: { port: 'vmpod.stream.0', cookie: MARKER + 'a' } }, 'direct.stderr.cookie: must be 64 lowercase hex digits (32 bytes)'],
      ['marker with a non-hex digit', { stdout: { port: 'vmpod.stream.0', cookie: 'g' + MARKER.slice(1) } }, 'direct.stdout.cookie: must be 64 lowercase hex digits (32 bytes)'],
      ['marker is a number', { stdout: { port: 'vmpod.stream.0', cookie: 7 } }, 'direct.stdout.cookie: must be a string'],
      ['marker missing', { stdout: { port: 'vmpod.stream.0' } }, /^direct\.stdout\.cookie: /],
      ['port of three digits', { stdout: { port: 'vmpod.stream.100', cookie: MARKER } }, 'direct.stdout.port: must be a stream port name, vmpod.stream.N'],
      ['an agent port', { stdout: { port: 'vmpod.agent.0', cookie: MARKER } }, 'direct.stdout.port: must be a stream port name, vmpod.stream.N'],
      ['the same port twice', { stdout: { port: 'vmpod.stream.1', cookie: MARKER }, stderr: { port: 'vmpod.stream.1', cookie: MARKER } }, 'direct.stderr.port: must differ from direct.stdout.port'],
      ['an unknown field', { stdout: { port: 'vmpod.stream.0', cookie: MARKER, fd: 1 } }, 'direct.stdout.fd: unknown field'],
      ['an unknown output', { stdin: { port: 'vmpod.stream.0', cookie: MARKER } }, 'direct.stdin: unknown field'],
      ['direct is an array', [], /^direct: must be an object$/],
    ] as [string, unknown, string | RegExp][]).map(([name, d, message]): Case => ({ name: `direct: ${name}`, expect: { error: 'INVALID_ARGUMENT', message }, run: direct(d) })),
    {
      name: 'direct: an output whose stdio is false',
      expect: { error: 'INVALID_ARGUMENT', message: 'direct.stdout: stdio.stdout is false: there is no output to send' },
      run: direct({ stdout: { port: 'vmpod.stream.0', cookie: MARKER } }, { stdio: { stdout: false } }),
    },
    {
      name: 'direct: a terminal',
      expect: { error: 'INVALID_ARGUMENT', message: 'direct: a terminal process has one pty, not separate output streams' },
      run: withSpec((c) => (obj(c).process!['terminal'] = true), { direct: { stdout: { port: 'vmpod.stream.0', cookie: MARKER } } }),
    },
    {
      name: 'direct: a well-formed port that does not exist',
      expect: { error: 'NOT_FOUND', message: /vmpod\.stream\.7/ },
      run: direct({ stdout: { port: 'vmpod.stream.7', cookie: MARKER } }),
    },
  ];
  // Junk after Hello: whatever the bytes, a first length above 1 MiB is refused by its header.
  const next = rng(11);
  for (let i = 0; i < 30; i++) {
    const junk = Buffer.alloc(10 + Math.floor(next() * 5000));
    for (let j = 0; j < junk.length; j++) junk[j] = Math.floor(next() * 256);
    junk[0] = 1 + (junk[0]! % 255); // a length of at least 16 MiB
    const length = junk.readUInt32BE(0);
    list.push({ name: `junk ${i} (${junk.length} bytes)`, expect: { closed: `frame of ${length} bytes exceeds the maximum of 1048576` }, run: sendOnly(junk) });
  }
  return list;
}

describe.skipIf(!ready)(`vmpod-agent under hostile input (${ready ? 'root' : `needs root and ${AGENT_BINARY}`})`, () => {
  let agent: HostAgent;
  beforeAll(async () => {
    agent = await startHostAgent({ cgroups: false });
  });
  afterAll(async () => {
    expect(await agent?.cleanup()).toBe(0);
  });

  it('serves every method and lists the features in Hello: each refuses an unknown field with INVALID_ARGUMENT naming it; an unknown method is UNIMPLEMENTED', async () => {
    const client = await agent.connect();
    expect(client.info.features).toEqual(['containers', 'exec', 'tty', 'stats', 'pause-container', 'update-container', 'mount', 'mount-9p', 'set-time', 'oom', 'network', 'direct-stdio', 'rootfs-overlay', 'find-device']);
    // Each method reaches its handler, which refuses the bogus field (or the call); none is unknown.
    const names = [...METHODS, 'NoSuchMethod'];
    const { frames, hungUp } = await rawSession(agent.socket, [hello, ...names.map((method, i) => request(3 + 2 * i, { method, params: { bogus: 1 } }))], 1000);
    expect(hungUp).toBe(false);
    const answers = answersOf(frames);
    names.forEach((method, i) => {
      const answer = answers.get(3 + 2 * i);
      expect(answer?.error, method).toBeDefined();
      if (method === 'NoSuchMethod') expect(answer).toEqual({ error: { code: 'UNIMPLEMENTED', message: 'unknown method "NoSuchMethod"' } });
      else expect(answer, method).toEqual({ error: { code: 'INVALID_ARGUMENT', message: 'bogus: unknown field' } });
    });
  });

  it('while shutting down, answers Hello, Ping, ListContainers and Wait only; anything else, unknown methods too, is FAILED_PRECONDITION', async () => {
    const other = await startHostAgent({ cgroups: false });
    try {
      const id = uniqueId();
      await other.client.createContainer({ id, config: minimalSpec(['sleep', '1000']), rootfs: other.rootfs, stdio: { stdout: false, stderr: false } });
      await other.client.startContainer(id);
      // One write: the agent reads every request after Shutdown in the same pass, before it has
      // reaped the container it killed, so all of them arrive while it shuts down.
      const after = [...METHODS, 'NoSuchMethod'];
      const params: Record<string, unknown> = { Hello: { version: 1 }, Wait: { containerId: id } };
      const bytes = [hello, request(3, { method: 'Shutdown' }), ...after.map((method, i) => request(5 + 2 * i, { method, params: params[method] ?? {} }))];
      const { frames } = await rawSession(other.socket, bytes, 8000);
      const answers = answersOf(frames);
      expect(answers.get(3)).toEqual({ result: {} });
      after.forEach((method, i) => {
        const answer = answers.get(5 + 2 * i);
        if (method === 'Hello') expect(answer?.result, method).toMatchObject({ version: 1 });
        else if (method === 'Ping') expect(answer, method).toEqual({ result: {} });
        else if (method === 'ListContainers') expect(answer?.result, method).toMatchObject({ containers: [{ id }] });
        else if (method === 'Wait') expect(answer, method).toEqual({ result: { exitCode: 137, signal: 9, oomKilled: false } });
        else expect(answer, method).toEqual({ error: { code: 'FAILED_PRECONDITION', message: 'the agent is shutting down' } });
      });
    } finally {
      expect(await other.cleanup()).toBe(0);
    }
  });

  it('answers each hostile case exactly as the protocol says, and serves a new session after every one', async () => {
    const rssBefore = rssKiB(agent.process.pid!);
    const all = cases();
    const failed: string[] = [];
    for (const c of all) {
      try {
        await runCase(agent, c);
      } catch (e) {
        failed.push(`${c.name}: ${(e as Error).message.split('\n')[0]}`);
      }
      await alive(agent, c.name); // a dead agent fails at once
    }
    expect(failed, 'cases whose outcome was not the expected one').toEqual([]);
    await deleteAll(agent);
    console.info(`agent robustness: ${all.length} cases, each with its exact outcome and a round trip after it`);
    // Still working, and not grown.
    const client = await agent.connect();
    const id = uniqueId();
    await client.createContainer({ id, config: minimalSpec(['echo', 'still here']), rootfs: agent.rootfs });
    const { stdout } = await client.openStdio(id, { stdout: true });
    await client.startContainer(id);
    expect((await collect(stdout)).toString()).toBe('still here\n');
    // The end of its output is not its exit: delete only once the agent has reaped it.
    await client.wait(id);
    await client.deleteContainer(id);
    expect(rssKiB(agent.process.pid!) - rssBefore).toBeLessThan(32 * 1024);
  });
});
