/**
 * The host end of direct streams: the marker matcher on hostile and awkward input (markers split
 * across chunks, data holding prefixes of the marker, forged markers, garbage before the start,
 * no end at all), and DirectStreamReadable over a real unix socket (backpressure, end, cut).
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  DirectStreamReadable,
  MARKER_SIZE,
  MAX_BEFORE_START,
  MarkerMatcher,
  connectDirectStream,
  newMarker,
} from '../../src/agent/direct-stream.js';
import { AgentClosedError, AgentProtocolError } from '../../src/agent/errors.js';

/** Feeds `chunks` and returns what the matcher released. */
function run(matcher: MarkerMatcher, chunks: Buffer[]): Buffer {
  return Buffer.concat(chunks.flatMap((c) => matcher.push(c)));
}

/** Splits `data` at the given offsets. */
function split(data: Buffer, cuts: number[]): Buffer[] {
  const points = [0, ...cuts.filter((c) => c > 0 && c < data.length).sort((a, b) => a - b), data.length];
  return points.slice(1).map((end, i) => data.subarray(points[i]!, end));
}

/** A deterministic pseudo-random generator (xorshift), so a failure can be replayed. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

describe('MarkerMatcher', () => {
  const marker = newMarker();

  it('makes markers of 32 bytes starting with 0xFF, each different', () => {
    expect(marker.length).toBe(MARKER_SIZE);
    expect(marker[0]).toBe(0xff);
    expect(newMarker().equals(marker)).toBe(false);
  });

  it('yields the bytes between the start and end markers, and only those', () => {
    const m = new MarkerMatcher(marker);
    const out = run(m, [Buffer.concat([Buffer.from('stale'), marker, Buffer.from('hello\n'), marker, Buffer.from('after')])]);
    expect(out.toString()).toBe('hello\n');
    expect(m.ended).toBe(true);
    expect(m.skipped).toBe(5);
    expect(m.after).toBe(5);
    expect(m.push(Buffer.from('more'))).toEqual([]);
    expect(m.after).toBe(9);
  });

  it('finds markers split across chunks at every position, however small the chunks', () => {
    const body = Buffer.from('some output\nand more output\n');
    const stream = Buffer.concat([marker, body, marker]);
    for (let a = 1; a < stream.length; a++) {
      for (const b of [a + 1, a + 7, stream.length - 3]) {
        const m = new MarkerMatcher(marker);
        expect(run(m, split(stream, [a, b])).equals(body)).toBe(true);
        expect(m.ended).toBe(true);
      }
    }
    const m = new MarkerMatcher(marker);
    expect(run(m, split(stream, Array.from({ length: stream.length }, (_, i) => i))).equals(body)).toBe(true);
    expect(m.ended).toBe(true);
  });

  it('passes data that holds prefixes of the marker, or a forged marker, through unchanged', () => {
    const forged = newMarker();
    const body = Buffer.concat([
      marker.subarray(0, 31),
      Buffer.from('x'),
      marker.subarray(0, 1),
      marker.subarray(0, 16),
      forged,
      Buffer.from([0xff, 0xff, 0xff]),
      marker.subarray(0, 30),
    ]);
    for (let cut = 0; cut <= body.length; cut++) {
      const m = new MarkerMatcher(marker);
      const out = run(m, [marker, ...split(body, [cut]), marker]);
      expect(out.equals(body)).toBe(true);
      expect(m.ended).toBe(true);
    }
  });

  it('holds back only a tail that could begin the marker, and releases it when the data goes on', () => {
    const m = new MarkerMatcher(marker);
    expect(run(m, [marker, Buffer.from('prompt$ ')]).toString()).toBe('prompt$ '); // text: nothing held
    expect(run(m, [Buffer.concat([Buffer.from('ab'), marker.subarray(0, 10)])]).toString()).toBe('ab');
    expect(run(m, [Buffer.from('c')]).equals(Buffer.concat([marker.subarray(0, 10), Buffer.from('c')]))).toBe(true);
    expect(m.ended).toBe(false);
  });

  it('gives the held-back bytes when the port closes without an end marker', () => {
    const m = new MarkerMatcher(marker);
    expect(run(m, [marker, Buffer.from('tail'), marker.subarray(0, 5)]).toString()).toBe('tail');
    expect(m.finish().equals(marker.subarray(0, 5))).toBe(true);
    expect(m.finish().length).toBe(0);
    expect(m.ended).toBe(false);
    // Before the start marker nothing is stream data.
    const early = new MarkerMatcher(marker);
    expect(run(early, [Buffer.from('junk'), marker.subarray(0, 4)]).length).toBe(0);
    expect(early.finish().length).toBe(0);
  });

  it('refuses more than MAX_BEFORE_START bytes before the start marker, with bounded memory', () => {
    const m = new MarkerMatcher(marker);
    const junk = Buffer.alloc(64 * 1024, 0xff); // all 0xFF: each chunk's tail could begin the marker
    let fed = 0;
    expect(() => {
      for (;;) {
        m.push(junk);
        fed += junk.length;
      }
    }).toThrow(AgentProtocolError);
    expect(fed).toBeLessThanOrEqual(MAX_BEFORE_START);
    expect(m.started).toBe(false);
  });

  it('joins a stream under way without a start marker', () => {
    const m = new MarkerMatcher(marker, { awaitStart: false });
    expect(run(m, [Buffer.from('middle'), marker]).toString()).toBe('middle');
    expect(m.ended).toBe(true);
  });

  it('rejects a marker of the wrong size', () => {
    expect(() => new MarkerMatcher(Buffer.alloc(16))).toThrow(RangeError);
  });

  it('keeps random data intact across random chunkings (seeded)', () => {
    const seed = Number(process.env['VMPOD_FUZZ_SEED'] ?? 20261128);
    const random = rng(seed);
    const bytes = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => Math.floor(random() * 256)));
    const fixedMarker = bytes(marker.length); // seeded too, so a run is reproducible
    let whole = 0;
    for (let round = 0; round < 200; round++) {
      const pieces: Buffer[] = [];
      for (let i = 0; i < 20; i++) {
        const r = random();
        if (r < 0.2) pieces.push(fixedMarker.subarray(0, 1 + Math.floor(random() * 31)));
        else if (r < 0.3) pieces.push(Buffer.alloc(1 + Math.floor(random() * 8), 0xff));
        else pieces.push(bytes(Math.floor(random() * 300)));
      }
      const body = Buffer.concat(pieces);
      const stream = Buffer.concat([bytes(Math.floor(random() * 100)), fixedMarker, body, fixedMarker, bytes(10)]);
      // What the matcher must deliver: from the first marker to the next one. Marker prefixes
      // next to each other can (rarely) form a whole marker inside the body: then it ends there.
      const start = stream.indexOf(fixedMarker) + fixedMarker.length;
      const expected = stream.subarray(start, stream.indexOf(fixedMarker, start));
      if (expected.equals(body)) whole++;
      const cuts = Array.from({ length: Math.floor(random() * 30) }, () => Math.floor(random() * stream.length));
      const m = new MarkerMatcher(fixedMarker);
      const out = run(m, split(stream, cuts));
      expect({ seed, round, same: out.equals(expected) }).toEqual({ seed, round, same: true });
      expect(m.ended).toBe(true);
    }
    expect(whole).toBeGreaterThan(180); // the generator mostly makes bodies without a marker
  });
});

describe('DirectStreamReadable over a unix socket', () => {
  let dir: string;
  let server: net.Server;
  let peer: Promise<net.Socket>;
  const marker = newMarker();

  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-ds-'));
    server = net.createServer();
    peer = new Promise((resolve) => server.once('connection', resolve));
    await new Promise<void>((resolve) => server.listen(path.join(dir, 'port.sock'), resolve));
  });

  afterEach(async () => {
    (await Promise.race([peer, Promise.resolve(undefined)]))?.destroy();
    await new Promise((resolve) => server.close(resolve));
    await fs.rm(dir, { recursive: true, force: true });
  });

  async function open(): Promise<{ stream: DirectStreamReadable; port: net.Socket; closed: Promise<void> }> {
    let onClose!: () => void;
    const closed = new Promise<void>((resolve) => (onClose = resolve));
    const stream = await connectDirectStream(path.join(dir, 'port.sock'), marker, { label: 'stdout of test', onClose });
    return { stream, port: await peer, closed };
  }

  it('ends after the end marker and closes the connection', async () => {
    const { stream, port, closed } = await open();
    port.write(Buffer.concat([marker, Buffer.from('hello '), marker.subarray(0, 7)]));
    port.write(Buffer.concat([marker.subarray(7), Buffer.from('ignored')]));
    const chunks: Buffer[] = [];
    for await (const chunk of stream) chunks.push(chunk as Buffer);
    expect(Buffer.concat(chunks).toString()).toBe('hello ');
    expect(stream.started).toBe(true);
    await closed;
  });

  it('stops reading the socket while its consumer does not read, and loses nothing', async () => {
    const { stream, port } = await open();
    const body = randomBytes(8 * 1024 * 1024);
    port.write(marker);
    let written = false;
    port.write(body, () => (written = true));
    port.end(marker);
    await new Promise((resolve) => setTimeout(resolve, 300));
    // Nothing reads: the Readable holds its high-water mark, the socket buffers the rest.
    expect(stream.readableLength).toBeLessThanOrEqual(stream.readableHighWaterMark + 64 * 1024);
    expect(written).toBe(false);
    const chunks: Buffer[] = [];
    for await (const chunk of stream) chunks.push(chunk as Buffer);
    expect(Buffer.concat(chunks).equals(body)).toBe(true);
  });

  it('fails with AgentClosedError after the data when the port closes without an end marker', async () => {
    const { stream, port } = await open();
    port.end(Buffer.concat([marker, Buffer.from('partial'), marker.subarray(0, 3)]));
    const chunks: Buffer[] = [];
    let error: unknown;
    stream.on('error', (e) => (error = e));
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    await new Promise<void>((resolve) => stream.on('close', resolve));
    expect(error).toBeInstanceOf(AgentClosedError);
    // The held-back tail never became a marker: it is data, delivered before the error.
    expect(Buffer.concat(chunks).equals(Buffer.concat([Buffer.from('partial'), marker.subarray(0, 3)]))).toBe(true);
  });

  it('fails with AgentProtocolError on a flood before the start marker', async () => {
    const { stream, port } = await open();
    let error: unknown;
    stream.on('error', (e) => (error = e));
    port.on('error', () => undefined); // the reader hangs up on it
    stream.resume();
    const junk = Buffer.alloc(256 * 1024, 0x41);
    for (let i = 0; i * junk.length <= MAX_BEFORE_START; i++) port.write(junk);
    await new Promise<void>((resolve) => stream.on('close', resolve));
    expect(error).toBeInstanceOf(AgentProtocolError);
  });

  it('closes the connection when destroyed', async () => {
    const { stream, port, closed } = await open();
    const peerClosed = new Promise((resolve) => port.on('close', resolve));
    stream.destroy();
    await closed;
    await peerClosed;
  });
});
