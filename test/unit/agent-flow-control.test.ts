// The flow-control invariant, measured on the host's own buffers: with a slow or stalled
// reader, the host never holds more than the window it granted.
//
// - stdout/stderr through the agent path: a greedy guest (it sends as much as its credit
//   allows, as the real agent does) against a reader that reads nothing, a little, or slowly.
//   At every step: the bytes held in the Readable are at most what the host granted and the
//   reader has not taken yet, and that granted-but-unconsumed window is at most INITIAL_WINDOW
//   (docs/agent-protocol.md: "A StdioReadable buffers at most its window (1 MiB)").
// - stdin through the agent path: a guest that grants credit slowly or not at all. The host
//   never sends more than the credit it was given, and holds at most the Writable's high water
//   mark, the chunk in progress and the transport's bound.
// - a stream port (src/agent/direct-stream.ts, read through a real unix socket as the host reads
//   QEMU's socket of a vmpod.stream.N port): no credit there, the bound is the Readable's high
//   water mark plus one socket read, and the socket stops being read while it is over.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentClient, TRANSPORT_HIGH_WATER } from '../../src/agent/client.js';
import { AgentProtocolError } from '../../src/agent/errors.js';
import { DirectStreamReadable, MARKER_SIZE, newMarker } from '../../src/agent/direct-stream.js';
import { FLAG_CLOSE, FLAG_WINDOW, HEADER_SIZE, INITIAL_WINDOW, MAX_DATA_CHUNK } from '../../src/agent/framing.js';
import type { StdioReadable, StdioWritable } from '../../src/agent/stdio.js';
import { FakeAgent } from './agent-fake.js';

/** Bytes `offset` to `offset + length` of the test streams: byte i is i mod 251 (any offset, any length). */
const CYCLE = Buffer.from(Array.from({ length: 251 * 2 + 64 * 1024 }, (_, i) => i % 251));
function pattern(offset: number, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  for (let o = 0; o < length; ) {
    const start = (offset + o) % 251;
    const n = Math.min(length - o, CYCLE.length - start);
    CYCLE.copy(out, o, start, start + n);
    o += n;
  }
  return out;
}

const KiB = 1024;
const MiB = 1024 * KiB;
const tick = () => new Promise<void>((r) => setImmediate(r));
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Resolves once `value()` has not changed for `quiet` turns of the event loop (bounded); `each`
 * runs at every turn (the invariant, checked while things move).
 */
async function settle(value: () => number, quiet = 30, max = 20_000, each?: () => void): Promise<number> {
  let last = value();
  let same = 0;
  for (let i = 0; i < max; i++) {
    await tick();
    each?.();
    const now = value();
    if (now === last) {
      if (++same >= quiet) return now;
    } else {
      last = now;
      same = 0;
    }
  }
  throw new Error(`still moving after ${max} turns (at ${last})`);
}

/**
 * A guest that writes an endless output on `stream` as fast as its credit allows (the real
 * agent's behaviour: it reads the container's pipe only while it has credit), in frames of
 * `frame` bytes. Credit: INITIAL_WINDOW plus every window update it has read from the host. It
 * keeps its own books from the frames it reads, so a host that grants more than it consumed
 * shows up as more bytes in the host's buffers.
 */
function greedyOutput(fake: FakeAgent, stream: number, frame: number, total = Infinity) {
  let granted = INITIAL_WINDOW;
  let sent = 0;
  let stopped = false;
  const seen = { windows: 0 };
  const pump = () => {
    if (stopped || fake.transport.destroyed) return;
    for (const d of fake.data.splice(0)) {
      if (d.stream === stream && d.flags === FLAG_WINDOW) {
        granted += d.payload.readUInt32BE(0);
        seen.windows++;
      }
    }
    while (granted - sent > 0 && sent < total) {
      const n = Math.min(frame, granted - sent, total - sent);
      fake.sendData(stream, pattern(sent, n));
      sent += n;
    }
    if (sent === total) return fake.sendData(stream, Buffer.alloc(0), FLAG_CLOSE);
    setImmediate(pump);
  };
  setImmediate(pump);
  return {
    granted: () => granted,
    sent: () => sent,
    windows: () => seen.windows,
    stop: () => (stopped = true),
  };
}

/** A reader that counts what it takes out of a Readable and checks it is the pattern, in order. */
function counted(readable: StdioReadable) {
  let consumed = 0;
  let wrong: number | null = null;
  const take = (b: Buffer) => {
    if (wrong === null && !b.equals(pattern(consumed, b.length))) wrong = consumed;
    consumed += b.length;
  };
  return {
    consumed: () => consumed,
    wrong: () => wrong,
    /** Takes up to `n` bytes with read() (paused mode). */
    read(n: number): number {
      const b = readable.read(Math.min(n, readable.readableLength)) as Buffer | null;
      if (b) take(b);
      return b?.length ?? 0;
    },
    take,
  };
}

const sessions: { client: AgentClient }[] = [];
afterEach(() => {
  for (const s of sessions.splice(0)) s.client.close();
});

async function outputSession(fd: 'stdout' | 'stderr', frame: number, total = Infinity) {
  const fake = new FakeAgent();
  const client = await AgentClient.connect(fake.transport, { callTimeoutMs: 5000 });
  sessions.push({ client });
  fake.onRequest = (r) => fake.respond(r.stream, {});
  const opened = await client.openStdio('c1', { [fd]: true });
  const readable = opened[fd]!;
  const stream = fake.requests.at(-1)!.stream;
  let error: unknown;
  readable.on('error', (e) => (error = e));
  const guest = greedyOutput(fake, stream, frame, total);
  const reader = counted(readable);
  let maxHeld = 0;
  let maxOutstanding = 0;
  /** The invariant, checked on the host's buffers at the moment it is called. */
  const check = (when: string) => {
    const held = readable.readableLength;
    const outstanding = guest.granted() - reader.consumed(); // granted and not taken by the reader
    maxHeld = Math.max(maxHeld, held);
    maxOutstanding = Math.max(maxOutstanding, outstanding);
    expect(error, `${fd} errored ${when}`).toBeUndefined();
    expect(held, `${fd}: bytes the host holds vs window granted and not consumed (${when})`).toBeLessThanOrEqual(outstanding);
    expect(outstanding, `${fd}: window granted and not consumed (${when})`).toBeLessThanOrEqual(INITIAL_WINDOW);
    expect(reader.wrong(), `${fd}: first offset read wrong`).toBeNull();
  };
  return { fake, client, readable, guest, reader, check, max: () => ({ held: maxHeld, outstanding: maxOutstanding }) };
}

describe('flow control: the host holds at most the window it granted', () => {
  for (const fd of ['stdout', 'stderr'] as const) {
    for (const frame of [MAX_DATA_CHUNK, 4 * KiB, MiB]) {
      it(`${fd}, ${frame}-byte frames: a stalled reader, a reader that takes a little then stalls, a slow reader`, async () => {
        const s = await outputSession(fd, frame);
        // Stalled from the start: the guest fills the initial window, and nothing more comes.
        await settle(s.guest.sent, 30, 20_000, () => s.check('while the guest fills the window'));
        s.check('stalled from the start');
        expect(s.readable.readableLength).toBe(INITIAL_WINDOW);
        expect(s.guest.sent()).toBe(INITIAL_WINDOW);

        // Takes a little, then stalls: whatever the host grants back, it holds no more than
        // the window once the guest has used the new credit.
        for (const bite of [1, 4 * KiB, 100 * KiB, 300 * KiB, 600 * KiB]) {
          s.reader.read(bite);
          s.check(`after a read of ${bite}`);
          await settle(s.guest.sent, 30, 20_000, () => s.check(`while the guest sends after a read of ${bite}`));
          s.check(`stalled after a read of ${bite}`);
        }

        // A slow reader: small reads, with the guest sending between them.
        for (let i = 0; i < 300; i++) {
          s.reader.read(16 * KiB);
          s.check(`slow read ${i}`);
          await tick();
          s.check(`between slow reads (${i})`);
        }
        await settle(s.guest.sent);
        s.check('stalled after the slow reads');
        // It made progress (the reader got what it took), and the grants kept coming.
        expect(s.reader.consumed()).toBeGreaterThan(2 * MiB);
        expect(s.guest.windows()).toBeGreaterThan(4);

        // A reader in flowing mode that pauses at once after each chunk.
        s.readable.on('data', (b: Buffer) => {
          s.reader.take(b);
          s.readable.pause();
        });
        for (let i = 0; i < 100; i++) {
          s.readable.resume();
          await tick();
          s.check(`flowing read ${i}`);
        }
        await settle(s.guest.sent);
        s.check('end');
        s.guest.stop();
        expect(s.max().held).toBeGreaterThan(0);
        console.info(`flow control ${fd}, ${frame}-byte frames: consumed ${s.reader.consumed()}, most held ${s.max().held}, most granted-unconsumed ${s.max().outstanding}`);
      });
    }
  }

  it('granting only what was consumed never starves a reader: a read of a whole window after a partial read, async iteration and a slow pipe to the end', async () => {
    // A reader that took a little (not enough for a batch) and then asks for more than is
    // buffered: the agent has no credit left, so the host must grant what was taken.
    const a = await outputSession('stdout', MAX_DATA_CHUNK);
    await settle(a.guest.sent);
    a.reader.read(100 * KiB);
    await settle(a.guest.sent);
    a.check('after a partial read');
    const whole = await new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`starved: a read of ${INITIAL_WINDOW} bytes waits with ${a.readable.readableLength} buffered`)), 5000);
      const attempt = () => {
        const b = a.readable.read(INITIAL_WINDOW) as Buffer | null;
        if (!b) return void a.readable.once('readable', attempt);
        clearTimeout(timer);
        resolve(b);
      };
      attempt();
    });
    a.reader.take(whole);
    a.check('after a whole window');
    expect(whole.length).toBe(INITIAL_WINDOW);
    a.guest.stop();

    // Async iteration and a slow consumer to the end of a finite output, frames of every size.
    for (const frame of [1000, MAX_DATA_CHUNK, MiB]) {
      const total = 6 * MiB + 123;
      const b = await outputSession('stderr', frame, total);
      let i = 0;
      for await (const chunk of b.readable) {
        b.reader.take(chunk as Buffer);
        b.check(`iterating, chunk ${i}`);
        if (i++ % 7 === 0) await sleep(1);
      }
      expect(b.reader.consumed(), `bytes read to the end (${frame}-byte frames)`).toBe(total);
    }
  });

  it('stdout credit goes back in quarter-window batches of what was consumed, never as zero, and never after the end', async () => {
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport, { callTimeoutMs: 5000 });
    sessions.push({ client });
    fake.onRequest = (r) => fake.respond(r.stream, {});
    const { stdout } = (await client.openStdio('c1', { stdout: true })) as { stdout: StdioReadable };
    const stream = fake.requests.at(-1)!.stream;
    const grants = () => fake.data.filter((d) => d.stream === stream && d.flags === FLAG_WINDOW).map((d) => d.payload.readUInt32BE(0));
    // A reader that asks before anything came has consumed nothing: no grant.
    expect(stdout.read()).toBeNull();
    await tick();
    expect(grants(), 'grants before any data').toEqual([]);
    // The guest uses its whole credit; the reader then takes 16 KiB at a time.
    for (let i = 0; i < 16; i++) fake.sendData(stream, pattern(i * 65536, 65536));
    await settle(() => stdout.readableLength);
    expect(stdout.readableLength).toBe(INITIAL_WINDOW);
    const reader = counted(stdout);
    const seen: string[] = [];
    for (let i = 1; i <= 64; i++) {
      reader.read(16 * KiB);
      await tick();
      seen.push(`${reader.consumed()}:${grants().join('+')}`);
    }
    // A grant each time a quarter window (256 KiB) has been taken, of exactly that.
    const at = (k: number) => seen[k * 16 - 2]!; // after 16k - 1 reads: no new grant yet
    for (let k = 1; k <= 4; k++) {
      expect(at(k), `after ${k * 256 - 16} KiB read`).toBe(`${k * 262144 - 16384}:${Array(k - 1).fill(262144).join('+')}`);
      expect(seen[k * 16 - 1], `after ${k * 256} KiB read`).toBe(`${k * 262144}:${Array(k).fill(262144).join('+')}`);
    }
    // The stream ends: what the reader takes after the close earns no grant.
    fake.sendData(stream, pattern(INITIAL_WINDOW, 1000));
    fake.sendData(stream, Buffer.alloc(0), FLAG_CLOSE);
    await settle(() => stdout.readableLength);
    const before = grants().length;
    reader.read(1000);
    const ended = new Promise<void>((r) => stdout.once('end', r));
    stdout.read();
    await ended;
    await settle(() => fake.data.length);
    expect(grants().length, 'grants after the close').toBe(before);
    expect(grants().every((g) => g > 0), 'no empty grant').toBe(true);
  });

  it('a violation of the credit errors every stdio stream of the connection with the AgentProtocolError', async () => {
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport, { callTimeoutMs: 5000 });
    sessions.push({ client });
    fake.onRequest = (r) => fake.respond(r.stream, {});
    const { stdin, stdout, stderr } = await client.openStdio('c1', { stdin: true, stdout: true, stderr: true });
    const errors = new Map<string, unknown>();
    for (const [name, s] of Object.entries({ stdin, stdout, stderr })) s!.on('error', (e) => errors.set(name, e));
    const closed = Promise.all([stdin, stdout, stderr].map((s) => new Promise((r) => s!.once('close', r))));
    const out = fake.requests.find((r) => r.method === 'OpenStdio' && r.params['fd'] === 'stdout')!.stream;
    fake.sendData(out, Buffer.alloc(INITIAL_WINDOW)); // stdout: the whole window
    fake.sendData(out, Buffer.alloc(1)); // one byte beyond it
    await closed;
    for (const name of ['stdin', 'stdout', 'stderr']) {
      expect(errors.get(name), name).toBeInstanceOf(AgentProtocolError);
      expect((errors.get(name) as Error).message, name).toMatch(/the agent sent 1 bytes with a credit of 0/);
    }
  });

  it('stdin: the host sends no byte beyond the credit it was given, and holds a bounded amount while the guest grants slowly or not at all', async () => {
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport, { callTimeoutMs: 5000 });
    sessions.push({ client });
    fake.onRequest = (r) => fake.respond(r.stream, {});
    const { stdin } = (await client.openStdio('c1', { stdin: true })) as { stdin: StdioWritable };
    const stream = fake.requests.at(-1)!.stream;
    let received = 0;
    let wrong: number | null = null;
    let granted = INITIAL_WINDOW;
    let overrun: string | null = null; // the first byte the host sent beyond its credit
    fake.onData = (d) => {
      if (d.stream !== stream) return;
      if (wrong === null && !d.payload.equals(pattern(received, d.payload.length))) wrong = received;
      received += d.payload.length;
      if (received > granted) overrun ??= `${received} bytes received with ${granted} granted`;
    };
    const grant = (n: number) => {
      granted += n;
      fake.sendData(stream, Buffer.from([n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]), FLAG_WINDOW);
    };
    // A writer that writes as long as write() says so (at most 16 chunks a turn, and 64 MiB in
    // all, so that a host that ignores credit fails here instead of looping), and on 'drain'.
    let produced = 0;
    let stop = false;
    const write = () => {
      for (let i = 0; i < 16 && !stop && produced < 64 * MiB; i++) {
        const ok = stdin.write(pattern(produced, 100 * KiB));
        produced += 100 * KiB;
        if (!ok) return;
      }
      if (!stop && produced < 64 * MiB) setImmediate(write);
    };
    stdin.on('drain', write);
    let maxHeld = 0;
    const check = (when: string) => {
      // What the host holds for this stdin: the Writable's buffer (the chunk in progress
      // included) and the transport's; and what it sent never exceeds the credit.
      const held = stdin.writableLength + fake.transport.writableLength;
      maxHeld = Math.max(maxHeld, held);
      expect(overrun, `stdin bytes the guest got vs credit it gave (${when})`).toBeNull();
      expect(received, `stdin bytes the guest got vs credit it gave (${when})`).toBeLessThanOrEqual(granted);
      expect(stdin.writableLength, `stdin Writable buffer (${when})`).toBeLessThanOrEqual(stdin.writableHighWaterMark + 100 * KiB);
      expect(fake.transport.writableLength, `transport (${when})`).toBeLessThanOrEqual(TRANSPORT_HIGH_WATER + HEADER_SIZE + MAX_DATA_CHUNK);
      expect(wrong, 'first stdin offset that arrived wrong').toBeNull();
    };
    write();
    await settle(() => received, 30, 20_000, () => check('while the host sends'));
    check('no grant');
    expect(received, 'the initial credit is used up').toBe(INITIAL_WINDOW);
    // Grants of odd sizes, each used up before the next.
    for (const n of [1, 7, 4096, 65_535, 65_536, 65_537, 300_000, MiB]) {
      grant(n);
      check(`grant of ${n}`);
      await settle(() => received, 30, 20_000, () => check(`while the host sends after a grant of ${n}`));
      check(`after a grant of ${n}`);
      expect(received, `all credit used after a grant of ${n}`).toBe(granted);
    }
    // A guest that grants in small steps while the host writes.
    for (let i = 0; i < 200; i++) {
      grant(9000);
      await tick();
      check(`trickle ${i}`);
    }
    await settle(() => received);
    check('end');
    expect(received).toBe(granted);
    stop = true;
    console.info(`flow control stdin: sent ${received} against ${granted} granted; most held ${maxHeld}`);
  });

  it('the guest gets a close only after all stdin bytes it gave credit for (no byte beyond it)', async () => {
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport, { callTimeoutMs: 5000 });
    sessions.push({ client });
    fake.onRequest = (r) => fake.respond(r.stream, {});
    const { stdin } = (await client.openStdio('c1', { stdin: true })) as { stdin: StdioWritable };
    const stream = fake.requests.at(-1)!.stream;
    let received = 0;
    fake.onData = (d) => {
      if (d.stream === stream) received += d.payload.length;
    };
    const done = new Promise<void>((r) => stdin.end(Buffer.alloc(INITIAL_WINDOW + 5000, 1), () => r()));
    await settle(() => received);
    expect(received).toBe(INITIAL_WINDOW);
    expect(fake.data.some((d) => d.stream === stream && d.flags === FLAG_CLOSE), 'no close before the last byte').toBe(false);
    fake.sendData(stream, Buffer.from([0, 0, 0x13, 0x88]), FLAG_WINDOW); // 5000
    await done;
    await settle(() => received);
    expect(received).toBe(INITIAL_WINDOW + 5000);
    expect(fake.data.filter((d) => d.stream === stream).at(-1)?.flags).toBe(FLAG_CLOSE);
  });
});

describe('flow control: a stream port holds at most its high water mark and one read', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
  });

  it('a stalled, then slow reader: the host stops reading the port socket', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-flow-'));
    dirs.push(dir);
    const socketPath = path.join(dir, 'stream.sock');
    const marker = newMarker();
    // The port's host side, as QEMU serves it: a unix socket into which the guest writes as
    // fast as the socket takes it.
    let written = 0;
    let serverSocket: net.Socket | undefined;
    const server = net.createServer((s) => {
      serverSocket = s;
      s.on('error', () => undefined);
      s.write(marker);
      const more = () => {
        while (!s.destroyed) {
          const ok = s.write(pattern(written, 64 * KiB));
          written += 64 * KiB;
          if (!ok) return void s.once('drain', more);
        }
      };
      more();
    });
    await new Promise<void>((r) => server.listen(socketPath, r));
    const socket = net.createConnection({ path: socketPath });
    await new Promise<void>((r, j) => socket.once('connect', r).once('error', j));
    const readable = new DirectStreamReadable(socket, marker, { label: 'test stream' });
    let error: unknown;
    readable.on('error', (e) => (error = e));
    try {
      // The Readable's mark, one socket read (64 KiB) and a marker's tail held back; the socket
      // itself holds at most its own mark and one read.
      const bound = readable.readableHighWaterMark + 64 * KiB + MARKER_SIZE;
      const socketBound = socket.readableHighWaterMark + 64 * KiB;
      let maxHeld = 0;
      let consumed = 0;
      let wrong: number | null = null;
      const check = (when: string) => {
        // What the host holds: the Readable's buffer and the socket's own (read from the
        // kernel and not handed on yet).
        const held = readable.readableLength + socket.readableLength;
        maxHeld = Math.max(maxHeld, held);
        expect(error, `stream errored (${when})`).toBeUndefined();
        expect(readable.readableLength, `stream port: bytes in the Readable (${when})`).toBeLessThanOrEqual(bound);
        expect(socket.readableLength, `stream port: bytes in the socket (${when})`).toBeLessThanOrEqual(socketBound);
        expect(wrong, 'first offset read wrong').toBeNull();
      };
      const read = (n: number) => {
        const b = readable.read(Math.min(n, readable.readableLength)) as Buffer | null;
        if (!b) return;
        if (wrong === null && !b.equals(pattern(consumed, b.length))) wrong = consumed;
        consumed += b.length;
      };
      // Stalled: the guest keeps writing until the kernel's socket buffers are full.
      await settle(() => written, 50, 20_000, () => check('while the guest fills the socket'));
      await sleep(50);
      check('stalled');
      expect(written - consumed, 'the guest was stopped by the host not reading, not by running out').toBeGreaterThan(readable.readableLength);
      for (let i = 0; i < 200; i++) {
        read(8 * KiB);
        check(`slow read ${i}`);
        await tick();
        check(`between slow reads (${i})`);
      }
      await settle(() => written, 50, 20_000, () => check('while the guest writes again'));
      check('stalled again');
      expect(consumed).toBeGreaterThan(MiB);
      console.info(`flow control stream port: written ${written}, consumed ${consumed}, most held ${maxHeld} (bound ${bound})`);
    } finally {
      readable.destroy();
      serverSocket?.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});
