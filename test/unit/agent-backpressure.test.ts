// stdin honours the transport's backpressure: a guest that grants credit without reading its
// end (or reads slowly) must stall the host's writer with a bounded number of bytes buffered on
// the host, and everything must arrive intact and in order once it reads. Also: window grants
// for stdout wait while the transport is full, and requests wait in the client (never sent when
// abandoned there).
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { AgentClient, TRANSPORT_HIGH_WATER } from '../../src/agent/client.js';
import { FLAG_CLOSE, FLAG_WINDOW, FrameType, HEADER_SIZE, MAX_DATA_CHUNK } from '../../src/agent/framing.js';
import type { StdioWritable } from '../../src/agent/stdio.js';
import { TimeoutError } from '../../src/errors.js';
import { FakeAgent, checkArrivals, grantOnOffer, pattern, patternSource } from './agent-fake.js';

const MiB = 1024 * 1024;
/** What the host may hold for one stdin stream: the test's bound, loose on purpose. */
const HOST_BOUND = 4 * MiB;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function stdinSession(options: { total: number }) {
  const fake = new FakeAgent();
  const client = await AgentClient.connect(fake.transport, { callTimeoutMs: 2000 });
  fake.onRequest = (r) => fake.respond(r.stream, {});
  const { stdin } = (await client.openStdio('c1', { stdin: true })) as { stdin: StdioWritable };
  const stream = fake.requests.at(-1)!.stream;
  grantOnOffer(fake, stream);
  const arrivals = checkArrivals(fake, stream);
  const source = patternSource(options.total);
  // What the host holds for this stream: the transport's buffer and the Writable's (which
  // counts the chunk the client is still sending); sampled all along.
  const hostBuffered = () => fake.transport.writableLength + stdin.writableLength;
  let maxBuffered = 0;
  let maxTransport = 0;
  const sampler = setInterval(() => {
    maxBuffered = Math.max(maxBuffered, hostBuffered());
    maxTransport = Math.max(maxTransport, fake.transport.writableLength);
  }, 2);
  return {
    fake,
    client,
    stdin,
    stream,
    arrivals,
    source,
    hostBuffered,
    max: () => ({ buffered: Math.max(maxBuffered, hostBuffered()), transport: Math.max(maxTransport, fake.transport.writableLength) }),
    stop: () => clearInterval(sampler),
  };
}

/** Resolves once `value()` has not changed for `quietMs` (at most `maxMs`). */
async function stalled(value: () => number, quietMs = 250, maxMs = 5000): Promise<number> {
  const started = Date.now();
  let last = value();
  let since = Date.now();
  while (Date.now() - started < maxMs) {
    await sleep(20);
    const now = value();
    if (now !== last) {
      last = now;
      since = Date.now();
    } else if (Date.now() - since >= quietMs) {
      return now;
    }
  }
  throw new Error(`still moving after ${maxMs} ms (at ${last})`);
}

/** Resolves once `condition()` holds (polled; at most `maxMs`). */
async function until(condition: () => boolean, what: string, maxMs = 20_000): Promise<void> {
  const started = Date.now();
  while (!condition()) {
    if (Date.now() - started > maxMs) throw new Error(`${what}: not after ${maxMs} ms`);
    await sleep(10);
  }
}

describe('stdin backpressure', () => {
  it('stalls a piped writer with bounded host memory while the guest grants credit but never reads, then delivers everything in order', async () => {
    const total = 64 * MiB;
    const s = await stdinSession({ total });
    try {
      s.fake.pauseReading();
      const readBefore = s.fake.bytesRead;
      const piped = pipeline(s.source.stream, s.stdin);
      piped.catch(() => undefined); // awaited below; a failed assertion must not leave it unhandled
      const produced = await stalled(s.source.produced);
      // The producer stopped well short of the end, and so did the host.
      expect(produced).toBeLessThan(8 * MiB);
      expect(s.hostBuffered()).toBeLessThanOrEqual(HOST_BOUND);
      // The transport holds its bound and at most one more frame.
      expect(s.fake.transport.writableLength).toBeLessThanOrEqual(TRANSPORT_HIGH_WATER + HEADER_SIZE + MAX_DATA_CHUNK);
      await sleep(200);
      expect(s.source.produced(), 'the producer stays stalled').toBe(produced);
      expect(s.fake.bytesRead, 'the guest read nothing').toBe(readBefore);
      expect(s.max().buffered).toBeLessThanOrEqual(HOST_BOUND);

      s.fake.resumeReading();
      await piped;
      const closed = () => s.fake.data.some((d) => d.stream === s.stream && d.flags === FLAG_CLOSE);
      await until(closed, 'the close flag reaching the guest');
      expect(s.arrivals.received()).toBe(total);
      expect(s.arrivals.mismatch(), 'first offset that arrived wrong').toBeNull();
      expect(s.fake.data.filter((d) => d.stream === s.stream).at(-1)?.flags).toBe(FLAG_CLOSE);
      expect(s.max().buffered, 'host bytes buffered, whole run').toBeLessThanOrEqual(HOST_BOUND);
      expect(s.client.closed).toBe(false);
    } finally {
      s.stop();
      s.client.close();
    }
  });

  it('keeps the host bounded while the guest reads slowly, and loses nothing', async () => {
    const total = 16 * MiB;
    const s = await stdinSession({ total });
    try {
      s.fake.readDelayMs = 4;
      // A writer that awaits each write's callback instead of piping.
      for (let offset = 0; offset < total; ) {
        const n = Math.min(256 * 1024, total - offset);
        await new Promise<void>((resolve, reject) => s.stdin.write(pattern(offset, n), (e) => (e ? reject(e) : resolve())));
        offset += n;
        expect(s.hostBuffered()).toBeLessThanOrEqual(HOST_BOUND);
      }
      await new Promise<void>((r) => s.stdin.end(r));
      await until(() => s.fake.data.some((d) => d.stream === s.stream && d.flags === FLAG_CLOSE), 'the close flag reaching the guest');
      expect(s.arrivals.received()).toBe(total);
      expect(s.arrivals.mismatch()).toBeNull();
      expect(s.max().buffered, 'host bytes buffered, whole run').toBeLessThanOrEqual(HOST_BOUND);
      expect(s.max().transport).toBeLessThanOrEqual(TRANSPORT_HIGH_WATER + HEADER_SIZE + MAX_DATA_CHUNK);
    } finally {
      s.stop();
      s.client.close();
    }
  }, 30_000);

  it('holds stdout window grants while the transport is full, and sends them (merged) once the guest reads', async () => {
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport, { callTimeoutMs: 2000 });
    fake.onRequest = (r) => fake.respond(r.stream, {});
    const { stdin, stdout } = await client.openStdio('c1', { stdin: true, stdout: true });
    const [inStream, outStream] = fake.requests.slice(-2).map((r) => r.stream) as [number, number];
    grantOnOffer(fake, inStream);
    fake.pauseReading();
    // Fill the transport with stdin until the client holds back.
    const source = patternSource(8 * MiB);
    const piped = pipeline(source.stream, stdin!);
    piped.catch(() => undefined);
    await stalled(source.produced);
    const grants: number[] = [];
    const granting = fake.onOffer!;
    fake.onOffer = (f) => {
      granting(f);
      if (f.stream === outStream && f.type === FrameType.Data && f.flags === FLAG_WINDOW) grants.push(f.payload.readUInt32BE(0));
    };
    // The guest sends stdout in small frames, one per turn of the event loop, and the host
    // reads each at once: every one would earn a window frame that the guest never reads.
    let consumed = 0;
    stdout!.on('data', (b: Buffer) => (consumed += b.length));
    const before = fake.transport.writableLength;
    for (let i = 0; i < 200; i++) {
      fake.sendData(outStream, Buffer.from('x'));
      await new Promise((r) => setImmediate(r));
    }
    expect(consumed).toBe(200);
    expect(grants, 'window frames written while the transport is full').toEqual([]);
    expect(fake.transport.writableLength).toBe(before);
    fake.resumeReading();
    await piped;
    await until(() => grants.reduce((a, b) => a + b, 0) >= 200, 'the held grants');
    expect(grants.reduce((a, b) => a + b, 0)).toBe(200);
    expect(grants.length).toBeLessThan(10);
    client.close();
  });

  it('holds requests in the client while the transport is full: sent in order once there is room, never sent when abandoned', async () => {
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport, { callTimeoutMs: 2000 });
    fake.onRequest = (r) => fake.respond(r.stream, r.method === 'Stats' ? { containerId: 'c1', timestamp: 1, cpu: {}, memory: {}, pids: {} } : {});
    const { stdin } = await client.openStdio('c1', { stdin: true });
    grantOnOffer(fake, fake.requests.at(-1)!.stream);
    fake.pauseReading();
    const source = patternSource(8 * MiB);
    const piped = pipeline(source.stream, stdin!);
    piped.catch(() => undefined);
    await stalled(source.produced);
    const queuedBytes = fake.transport.writableLength;
    const abandoned = client.ping({ timeoutMs: 100 });
    const kept = client.stats('c1');
    const alsoKept = client.ping();
    expect(fake.transport.writableLength, 'requests wait in the client').toBe(queuedBytes);
    await expect(abandoned).rejects.toBeInstanceOf(TimeoutError);
    fake.resumeReading();
    await expect(kept).resolves.toMatchObject({ containerId: 'c1' });
    await expect(alsoKept).resolves.toBeUndefined();
    await piped;
    const methods = fake.requests.map((r) => r.method);
    expect(methods).toEqual(['Hello', 'OpenStdio', 'Stats', 'Ping']); // the abandoned Ping never went out
    const ids = fake.requests.map((r) => r.stream);
    expect([...ids].sort((a, b) => a - b)).toEqual(ids); // in stream id order
    expect(client.closed).toBe(false);
    client.close();
  });
});
