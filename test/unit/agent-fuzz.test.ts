// Fuzzing the host-side decoder: every byte from the guest is hostile. Random and mutated
// frames, truncated streams, huge lengths, bad JSON, wrong types and unknown stream ids must
// only ever surface as typed errors, never crash, hang, or grow memory without bound.
import { describe, expect, it } from 'vitest';
import { AgentClient } from '../../src/agent/client.js';
import { AgentClosedError, AgentError, AgentProtocolError } from '../../src/agent/errors.js';
import { FLAG_CLOSE, FLAG_WINDOW, FrameDecoder, FrameType, HEADER_SIZE, MAX_PAYLOAD, encodeFrame } from '../../src/agent/framing.js';
import { FakeAgent } from './agent-fake.js';

// Deterministic PRNG (mulberry32) so that a failure names a reproducible seed.
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

const SEED = Number(process.env['VMPOD_FUZZ_SEED'] ?? 0x5eed);
const ITERATIONS = Number(process.env['VMPOD_FUZZ_ITERATIONS'] ?? 1000);

function randomBytes(next: () => number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(next() * 256);
  return b;
}

const json = (v: unknown) => Buffer.from(JSON.stringify(v));

/** Valid frames for the calls a test keeps pending (streams 3, 5, 7, 9, 11), plus stdio frames. */
function corpus(): Buffer[] {
  return [
    encodeFrame(3, FrameType.Response, 0, json({ result: { exitCode: 0, signal: 0, oomKilled: false } })),
    encodeFrame(5, FrameType.Response, 0, json({ result: { containers: [{ id: 'c1', status: 'running', pid: 9, bundle: '/b', rootfs: 'builtin', createdAt: 1, terminal: false, exit: null, execs: [] }] } })),
    encodeFrame(7, FrameType.Response, 0, json({ result: { containerId: 'c1', timestamp: 5, cpu: { usageUsec: 1, userUsec: 1, systemUsec: 0 }, memory: { currentBytes: 4096, maxBytes: null, peakBytes: 8192, oomKills: 0 }, pids: { current: 1, max: null } } })),
    encodeFrame(9, FrameType.Response, 0, json({ error: { code: 'NOT_FOUND', message: 'no such container', errno: 'ENOENT' } })),
    encodeFrame(11, FrameType.Response, 0, json({ result: {} })),
    encodeFrame(13, FrameType.Data, 0, Buffer.from('hello world')),
    encodeFrame(13, FrameType.Data, FLAG_CLOSE),
    encodeFrame(15, FrameType.Data, FLAG_WINDOW, Buffer.from([0, 0, 16, 0])),
    encodeFrame(0, FrameType.Response, 0, json({ error: { code: 'INVALID_ARGUMENT', message: 'protocol error: x' } })),
  ];
}

function mutate(next: () => number, input: Buffer): Buffer {
  let b = Buffer.from(input);
  const ops = 1 + Math.floor(next() * 4);
  for (let i = 0; i < ops; i++) {
    const pos = Math.floor(next() * Math.max(1, b.length));
    switch (Math.floor(next() * 8)) {
      case 0: // flip a bit
        if (b.length) b[pos] = b[pos]! ^ (1 << Math.floor(next() * 8));
        break;
      case 1: // random byte
        if (b.length) b[pos] = Math.floor(next() * 256);
        break;
      case 2: // truncate
        b = b.subarray(0, pos);
        break;
      case 3: // insert random bytes
        b = Buffer.concat([b.subarray(0, pos), randomBytes(next, 1 + Math.floor(next() * 16)), b.subarray(pos)]);
        break;
      case 4: // huge or off-by-some length
        if (b.length >= 4) b.writeUInt32BE(next() < 0.5 ? 0xffffffff - Math.floor(next() * 1000) : Math.floor(next() * 64), 0);
        break;
      case 5: // stream id: unknown, even or zero
        if (b.length >= 8) b.writeUInt32BE([0, 2, 4097, 0xffffffff, Math.floor(next() * 2 ** 32)][Math.floor(next() * 5)]!, 4);
        break;
      case 6: // type and flags
        if (b.length >= 10) {
          b[8] = Math.floor(next() * 5);
          b[9] = Math.floor(next() * 256);
        }
        break;
      case 7: // duplicate a slice
        b = Buffer.concat([b, b.subarray(pos)]);
        break;
    }
  }
  return b;
}

/** Payloads that are valid frames with bad JSON or wrong types. */
function badPayloads(): Buffer[] {
  const bodies: (string | unknown)[] = [
    '',
    '{',
    'null',
    '[]',
    '"x"',
    '{"result":1,"error":2}',
    '{}',
    '{"error":{"code":"NOPE","message":"x"}}',
    '{"error":{"code":"NOT_FOUND","message":42}}',
    '{"result":{"exitCode":1.5,"signal":0,"oomKilled":false}}',
    '{"result":{"exitCode":-9,"signal":0,"oomKilled":"no"}}',
    '{"result":{"containers":{"length":1e9}}}',
    '{"result":{"containers":[{"id":{"toString":1}}]}}',
    '{"result":{"containerId":"c","timestamp":1,"cpu":null,"memory":{},"pids":{}}}',
    '[' .repeat(100_000) + ']'.repeat(100_000),
    '{"a":' .repeat(50_000) + '1' + '}'.repeat(50_000),
    '{"result":"' + 'x'.repeat(200_000) + '"}',
    '\u0000\uffff\ud800',
  ];
  const out: Buffer[] = [];
  for (const stream of [3, 5, 7, 9, 11]) {
    for (const body of bodies) out.push(encodeFrame(stream, FrameType.Response, 0, Buffer.from(body as string)));
  }
  return out;
}

function isTyped(e: unknown): boolean {
  return e instanceof AgentProtocolError || e instanceof AgentClosedError || e instanceof AgentError;
}

/** A connected client with five pending calls and two stdio streams open. */
async function victim() {
  const fake = new FakeAgent();
  const client = await AgentClient.connect(fake.transport);
  const errors: unknown[] = [];
  const settled: Promise<void>[] = [];
  const track = (p: Promise<unknown>) => settled.push(p.then(() => undefined, (e: unknown) => void errors.push(e)));
  fake.onRequest = (r) => {
    if (r.method === 'OpenStdio') fake.respond(r.stream, {});
  };
  const stdio = await client.openStdio('c1', { stdout: true }); // stream 3
  const stdio2 = await client.openStdio('c1', { stdin: true }); // stream 5
  stdio.stdout!.on('error', (e) => errors.push(e)).resume();
  stdio2.stdin!.on('error', (e) => errors.push(e));
  track(client.wait('c1')); // 7
  track(client.listContainers()); // 9
  track(client.stats('c1')); // 11
  track(client.wait('c2')); // 13
  track(client.ping()); // 15
  let closeError: Error | undefined;
  client.on('close', (e) => (closeError = e));
  return { fake, client, errors, settled, closeError: () => closeError };
}

describe(`agent decoder fuzzing (seed ${SEED}, ${ITERATIONS} iterations per case)`, () => {
  it('FrameDecoder: random bytes only ever throw AgentProtocolError and buffer at most one frame', () => {
    const next = rng(SEED);
    const bound = HEADER_SIZE + MAX_PAYLOAD + 65536;
    let thrown = 0;
    for (let i = 0; i < ITERATIONS * 5; i++) {
      const d = new FrameDecoder();
      try {
        for (let j = 0; j < 8; j++) {
          d.push(randomBytes(next, Math.floor(next() * 65536)));
          expect(d.buffered).toBeLessThanOrEqual(bound);
        }
      } catch (e) {
        thrown++;
        expect(e).toBeInstanceOf(AgentProtocolError);
      }
    }
    // Random garbage is almost never a valid frame sequence.
    expect(thrown).toBeGreaterThan(ITERATIONS * 4);
  });

  it('FrameDecoder: a length header just under the maximum buffers only what arrived', () => {
    const d = new FrameDecoder();
    const h = Buffer.alloc(HEADER_SIZE);
    h.writeUInt32BE(MAX_PAYLOAD, 0);
    h.writeUInt32BE(1, 4);
    h[8] = FrameType.Data;
    expect(d.push(h)).toEqual([]);
    for (let i = 0; i < 15; i++) d.push(Buffer.alloc(65536));
    expect(d.buffered).toBe(HEADER_SIZE + 15 * 65536);
    expect(d.push(Buffer.alloc(MAX_PAYLOAD - 15 * 65536))).toHaveLength(1);
    expect(d.buffered).toBe(0);
  });

  it('AgentClient: mutated frames, random bytes, bad JSON and wrong types surface only as typed errors', async () => {
    const next = rng(SEED + 1);
    const valid = corpus();
    const bad = badPayloads();
    const heapBefore = process.memoryUsage().heapUsed;
    let protocolErrors = 0;
    for (let i = 0; i < ITERATIONS; i++) {
      const v = await victim();
      const kind = i % 4;
      const frames: Buffer[] = [];
      for (let j = 0; j < 1 + Math.floor(next() * 6); j++) {
        const base = valid[Math.floor(next() * valid.length)]!;
        if (kind === 0) frames.push(mutate(next, base));
        else if (kind === 1) frames.push(randomBytes(next, Math.floor(next() * 4096)));
        else if (kind === 2) frames.push(bad[Math.floor(next() * bad.length)]!);
        else frames.push(next() < 0.5 ? base : mutate(next, base));
      }
      // Deliver in random slices, then maybe truncate, then hang up: nothing may stay pending.
      const bytes = Buffer.concat(frames);
      let off = 0;
      while (off < bytes.length) {
        const n = 1 + Math.floor(next() * 8192);
        v.fake.send(bytes.subarray(off, off + n));
        off += n;
        if (next() < 0.2) await new Promise((r) => setImmediate(r));
      }
      await new Promise((r) => setImmediate(r));
      v.fake.end();
      await Promise.all(v.settled);
      await new Promise((r) => setImmediate(r));
      expect(v.client.closed).toBe(true);
      for (const e of v.errors) expect(isTyped(e), String(e)).toBe(true);
      const closeError = v.closeError();
      if (closeError) expect(isTyped(closeError), String(closeError)).toBe(true);
      if (closeError instanceof AgentProtocolError) protocolErrors++;
    }
    expect(protocolErrors).toBeGreaterThan(ITERATIONS / 4);
    // Nothing accumulates across connections (generous bound: GC timing is not ours to control).
    global.gc?.();
    expect(process.memoryUsage().heapUsed - heapBefore).toBeLessThan(256 * 1024 * 1024);
  });

  it('AgentClient: a flood of garbage after a huge length is refused at once, not buffered', async () => {
    const v = await victim();
    const h = Buffer.alloc(HEADER_SIZE);
    h.writeUInt32BE(0xfffffff0, 0);
    h.writeUInt32BE(7, 4);
    h[8] = FrameType.Response;
    v.fake.send(h);
    for (let i = 0; i < 64; i++) v.fake.send(Buffer.alloc(1 << 20, 0x41)); // 64 MiB more, ignored
    await Promise.all(v.settled);
    expect(v.closeError()).toBeInstanceOf(AgentProtocolError);
    expect(String(v.closeError())).toMatch(/exceeds the maximum/);
    expect(v.errors.length).toBeGreaterThanOrEqual(5);
    for (const e of v.errors) expect(isTyped(e)).toBe(true);
  });

  it('AgentClient: responses and data on unknown or even stream ids close the connection with a typed error', async () => {
    for (const frame of [
      encodeFrame(4097, FrameType.Response, 0, json({ result: {} })),
      encodeFrame(4097, FrameType.Data, 0, Buffer.from('x')),
      Buffer.concat([encodeFrame(1, FrameType.Response, 0, json({ result: {} })), Buffer.from([0, 0, 0, 0, 0, 0, 0, 2, 2, 0])]),
    ]) {
      const v = await victim();
      v.fake.send(frame);
      await Promise.all(v.settled);
      expect(v.closeError()).toBeInstanceOf(AgentProtocolError);
    }
    // A late frame on an id the client used and released is dropped quietly.
    const v = await victim();
    v.fake.send(encodeFrame(1, FrameType.Response, 0, json({ result: {} })));
    await new Promise((r) => setImmediate(r));
    expect(v.client.closed).toBe(false);
    v.client.close();
  });
});
