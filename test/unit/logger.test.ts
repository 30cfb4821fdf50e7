/**
 * The console log writer (native/logger, started by spawnLogPipe in src/host/process.ts) and
 * logTail, against a guest that prints as much and as oddly as it likes. No root needed.
 *
 * The writer's contract (native/logger/logger.cc): it reads its pipe in chunks of at most 64 KiB;
 * a chunk that would take FILE past MAX_BYTES first renames FILE to FILE.1 (replacing it) and
 * starts a new FILE; a chunk larger than MAX_BYTES (possible only with MAX_BYTES below 64 KiB)
 * keeps its end only. So FILE never holds more than MAX_BYTES, FILE is always a contiguous end
 * of what was written, and FILE.1 ends where FILE's first chunk starts: with MAX_BYTES of 64 KiB
 * or more, FILE.1 followed by FILE is exactly the last bytes written, nothing lost or reordered.
 * It exits (0) at end of input, i.e. once every write end of the pipe is closed.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isAlive, LOGGER_BINARY, logTail, signalProcess, spawnLogPipe, type LogPipe } from '../../src/host/process.js';
import { InvalidArgumentError } from '../../src/errors.js';

const writeSome = promisify(fs.write);

/** Writes all of `data` on `fd` (in the thread pool: the event loop keeps running). */
async function write(fd: number, data: Buffer): Promise<void> {
  for (let done = 0; done < data.length; ) done += (await writeSome(fd, data.subarray(done))).bytesWritten;
}
const CAP = 64 * 1024;
/** What a terminal acts on or that reads as something else (as test/unit/printable.test.ts), and CR. */
const UNSAFE = /[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\p{Cs}]/u;

let dir: string;
let file: string;
const pipes: LogPipe[] = [];

/** A deterministic byte stream (NULs, ESC, invalid UTF-8 and all), no two windows of 16 bytes alike in practice. */
function stream(length: number, seed: string): Buffer {
  const out = Buffer.alloc(length);
  let block = Buffer.alloc(0);
  for (let at = 0, n = 0; at < length; at += block.length, n++) {
    block = createHash('sha256').update(`${seed}:${n}`).digest();
    block.copy(out, at);
  }
  return out;
}

function size(p: string): number {
  try {
    return fs.statSync(p).size;
  } catch {
    return 0;
  }
}

function read(p: string): Buffer {
  try {
    return fs.readFileSync(p);
  } catch {
    return Buffer.alloc(0);
  }
}

async function start(maxBytes: number): Promise<{ pipe: LogPipe; exited: Promise<{ code: number | null; signal: string | null }> }> {
  const pipe = await spawnLogPipe(file, maxBytes);
  pipes.push(pipe);
  const child = pipe.logger.child;
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve({ code: child.exitCode, signal: child.signalCode });
    else child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  return { pipe, exited };
}

async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** Waits until `p` has `bytes` bytes (the writer has caught up). */
async function untilSize(p: string, bytes: number): Promise<void> {
  const deadline = Date.now() + 5000;
  while (size(p) !== bytes) {
    if (Date.now() > deadline) throw new Error(`${p} has ${size(p)} bytes, not ${bytes}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/**
 * Watches the sizes of FILE and FILE.1 (and that no FILE.2 appears) every millisecond while
 * writes go on in the thread pool; `stop` returns the largest sizes seen.
 */
function watchSizes(): { stop: () => { file: number; previous: number; others: string[] } } {
  let maxFile = 0;
  let maxPrevious = 0;
  const sample = (): void => {
    maxFile = Math.max(maxFile, size(file));
    maxPrevious = Math.max(maxPrevious, size(`${file}.1`));
  };
  const timer = setInterval(sample, 1);
  return {
    stop: () => {
      clearInterval(timer);
      sample();
      return { file: maxFile, previous: maxPrevious, others: fs.readdirSync(dir).filter((n) => n !== 'console.log' && n !== 'console.log.1') };
    },
  };
}

describe('the console log writer (vmpod-logger)', () => {
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-logger-'));
    file = path.join(dir, 'console.log');
    expect(fs.existsSync(LOGGER_BINARY), `${LOGGER_BINARY} (npm run build:native)`).toBe(true);
  });

  afterEach(() => {
    for (const pipe of pipes.splice(0)) {
      pipe.close();
      if (isAlive(pipe.logger)) signalProcess(pipe.logger, 'SIGKILL');
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('keeps FILE within the cap and FILE.1 just before it: nothing lost or reordered across rotations; exits when the pipe closes', async () => {
    const { pipe, exited } = await start(CAP);
    const data = stream(5 * CAP + 12_345, 'rotation');
    const watch = watchSizes();
    // Chunks of all sizes: single bytes, a page, exactly a pipe's worth, more than the cap.
    const sizes = [1, 7, 4096, CAP, 100_000, 3, CAP + 1, 50_000];
    let at = 0;
    for (let i = 0; at < data.length; i++) {
      const chunk = data.subarray(at, at + sizes[i % sizes.length]!);
      await write(pipe.fd, chunk);
      at += chunk.length;
    }
    pipe.close();
    expect(await within(exited, 5000, 'the writer exits at end of input')).toEqual({ code: 0, signal: null });
    const seen = watch.stop();
    expect(seen.file).toBeLessThanOrEqual(CAP);
    expect(seen.previous).toBeLessThanOrEqual(CAP);
    expect(seen.others).toEqual([]);

    const last = read(file);
    const previous = read(`${file}.1`);
    expect(last.length).toBeGreaterThan(0);
    expect(last.length).toBeLessThanOrEqual(CAP);
    expect(previous.length).toBeGreaterThan(0);
    expect(previous.length).toBeLessThanOrEqual(CAP);
    // A rotation happens only when the next chunk (at most 64 KiB) does not fit: FILE.1 was full but for less than a chunk.
    expect(previous.length + last.length).toBeGreaterThan(CAP);
    // FILE.1 then FILE: exactly the last bytes written.
    const kept = Buffer.concat([previous, last]);
    expect(kept.equals(data.subarray(data.length - kept.length))).toBe(true);
  });

  it('rotates at the exact byte: a FILE at the cap stays, the next byte starts a new FILE; a restarted writer counts what FILE holds', async () => {
    const first = stream(CAP, 'exact');
    let { pipe, exited } = await start(CAP);
    await write(pipe.fd, first);
    await untilSize(file, CAP);
    expect(fs.existsSync(`${file}.1`)).toBe(false);
    await write(pipe.fd, Buffer.from('X'));
    await untilSize(file, 1);
    expect(read(`${file}.1`).equals(first)).toBe(true);
    expect(read(file).toString()).toBe('X');
    pipe.close();
    expect(await within(exited, 5000, 'exit')).toEqual({ code: 0, signal: null });

    // A new writer on the same FILE (a restart) appends, and rotates by what FILE already holds.
    ({ pipe, exited } = await start(CAP));
    await write(pipe.fd, Buffer.alloc(CAP - 11, 'a'));
    await untilSize(file, CAP - 10);
    await write(pipe.fd, Buffer.from('b'.repeat(11)));
    await untilSize(file, 11);
    expect(read(`${file}.1`).equals(Buffer.concat([Buffer.from('X'), Buffer.alloc(CAP - 11, 'a')]))).toBe(true);
    expect(read(file).toString()).toBe('b'.repeat(11));
    pipe.close();
    expect(await within(exited, 5000, 'exit')).toEqual({ code: 0, signal: null });
  });

  it('lives as long as any write end is open (the hypervisor holds one), and ends on SIGTERM', async () => {
    const { pipe, exited } = await start(CAP);
    // The hypervisor's copy: a child writing on it, ours closed at once.
    const writer = spawn('/bin/sh', ['-c', 'printf "boot: "; sleep 0.3; printf "done"'], { stdio: ['ignore', pipe.fd, 'ignore'] });
    pipe.close();
    await new Promise((r) => setTimeout(r, 100));
    expect(isAlive(pipe.logger)).toBe(true);
    await new Promise((r) => writer.once('exit', r));
    expect(await within(exited, 5000, 'the writer exits once the last write end closes')).toEqual({ code: 0, signal: null });
    expect(read(file).toString()).toBe('boot: done');

    const second = await start(CAP);
    expect(signalProcess(second.pipe.logger, 'SIGTERM')).toBe(true);
    expect(await within(second.exited, 5000, 'SIGTERM')).toEqual({ code: null, signal: 'SIGTERM' });
  });

  it('a hostile writer (a 10 MB burst, one line without a newline, NULs, escapes) never takes the log past the cap', async () => {
    const { pipe, exited } = await start(CAP);
    const burst = stream(10 * 1024 * 1024, 'burst');
    // No newline at all, but NULs and ESC in plenty: a line of 10 MB.
    for (let i = 0; i < burst.length; i++) if (burst[i] === 0x0a) burst[i] = 0x1b;
    burst.fill(0, 1000, 200_000);
    const watch = watchSizes();
    const started = Date.now();
    for (let at = 0; at < burst.length; at += 1024 * 1024) await write(pipe.fd, burst.subarray(at, at + 1024 * 1024));
    pipe.close();
    expect(await within(exited, 10_000, 'exit')).toEqual({ code: 0, signal: null });
    const seen = watch.stop();
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(seen.file).toBeLessThanOrEqual(CAP);
    expect(seen.previous).toBeLessThanOrEqual(CAP);
    expect(seen.others).toEqual([]);
    const kept = Buffer.concat([read(`${file}.1`), read(file)]);
    expect(kept.length).toBeLessThanOrEqual(2 * CAP);
    expect(kept.equals(burst.subarray(burst.length - kept.length))).toBe(true);
  });

  it('with a cap below a chunk (the 4 KiB minimum), a chunk keeps its end: FILE within the cap, the end of what was written', async () => {
    const small = 4096;
    const { pipe, exited } = await start(small);
    const data = stream(3 * 1024 * 1024 + CAP, 'small');
    const bulk = data.length - CAP;
    const watch = watchSizes();
    for (let at = 0; at < bulk; at += 256 * 1024) await write(pipe.fd, data.subarray(at, Math.min(at + 256 * 1024, bulk)));
    // Once the writer has caught up (FILE ends as the bulk does), one last write of a whole pipe's
    // worth: read in one chunk (the pipe was empty), 16 times the cap.
    const deadline = Date.now() + 5000;
    while (!read(file).subarray(-64).equals(data.subarray(bulk - 64, bulk))) {
      if (Date.now() > deadline) throw new Error('the writer did not catch up');
      await new Promise((r) => setTimeout(r, 2));
    }
    await write(pipe.fd, data.subarray(bulk));
    pipe.close();
    expect(await within(exited, 10_000, 'exit')).toEqual({ code: 0, signal: null });
    const seen = watch.stop();
    expect(seen.file).toBeLessThanOrEqual(small);
    expect(seen.previous).toBeLessThanOrEqual(small);
    const last = read(file);
    const previous = read(`${file}.1`);
    // FILE is a contiguous end of the stream (here the last 4 KiB of the last chunk); FILE.1 a piece of it that ends at or before FILE starts.
    expect(last.length).toBe(small);
    expect(last.equals(data.subarray(data.length - last.length))).toBe(true);
    const where = data.indexOf(previous);
    expect(previous.length).toBeGreaterThan(0);
    expect(where).toBeGreaterThanOrEqual(0);
    expect(where + previous.length).toBeLessThanOrEqual(data.length - last.length);
  });

  it('refuses a cap below 4 KiB or not a number (spawnLogPipe: InvalidArgumentError; the writer: exit 2), and a FILE that is a symlink (exit 1)', async () => {
    for (const max of [100, 4095.5, -1, Number.NaN]) {
      await expect(spawnLogPipe(file, max)).rejects.toBeInstanceOf(InvalidArgumentError);
    }
    // The writer itself takes digits only ("-1" would be the largest value to strtoull: no cap).
    for (const max of ['100', '4095.5', '-1', ' 5000', '+5000', '0x10000', '99999999999999999999999', '']) {
      const result = spawnSync(LOGGER_BINARY, [file, max], { input: '', encoding: 'utf8' });
      expect({ max, status: result.status }).toEqual({ max, status: 2 });
    }
    expect(fs.existsSync(file)).toBe(false);
    fs.symlinkSync(path.join(dir, 'elsewhere'), file);
    const { pipe, exited } = await start(CAP);
    pipe.close();
    expect(await within(exited, 5000, 'symlink')).toEqual({ code: 1, signal: null });
    expect(fs.existsSync(path.join(dir, 'elsewhere'))).toBe(false);
  });
});

describe('logTail', () => {
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-logger-'));
    file = path.join(dir, 'console.log');
  });

  afterEach(() => {
    for (const pipe of pipes.splice(0)) {
      pipe.close();
      if (isAlive(pipe.logger)) signalProcess(pipe.logger, 'SIGKILL');
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('returns printable text only: escape sequences, control characters, bidi controls and invalid UTF-8 shown escaped', async () => {
    const hostile = Buffer.concat([
      Buffer.from('\x1b[2J\x1b[Hboot ok\r\n'),
      Buffer.from('\x1b]52;c;Y3VybCBldmlsIHwgc2g=\x07title\x1b]0;pwned\x07\n'),
      Buffer.from('nul\x00bell\x07bs\x08del\x7f lone cr\rover\n'),
      Buffer.from('c1 \u009b2J \u009d0;t\u009c bidi vmpod-\u202etxt.exe\n'),
      Buffer.from([0x69, 0x6e, 0x76, 0x61, 0x6c, 0x69, 0x64, 0x20, 0xff, 0xfe, 0xc3, 0x28, 0xed, 0xa0, 0x80, 0x0a]),
      Buffer.from('émoji 🙂 ok\tend\n'),
    ]);
    const { pipe, exited } = await start(CAP);
    await write(pipe.fd, hostile);
    pipe.close();
    await within(exited, 5000, 'exit');
    const tail = logTail(file);
    expect(tail).not.toMatch(UNSAFE);
    expect(tail).not.toMatch(/\r/u);
    expect(tail.split('\n')).toEqual([
      '\\x1b[2J\\x1b[Hboot ok',
      '\\x1b]52;c;Y3VybCBldmlsIHwgc2g=\\x07title\\x1b]0;pwned\\x07',
      'nul\\x00bell\\x07bs\\x08del\\x7f lone cr\\rover',
      'c1 \\u009b2J \\u009d0;t\\u009c bidi vmpod-\\u202etxt.exe',
      'invalid \ufffd\ufffd\ufffd(\ufffd\ufffd\ufffd',
      'émoji 🙂 ok\tend',
    ]);
  });

  it('spans the rotation: the tail is the last bytes written, across FILE.1 and FILE, a character split by it whole', async () => {
    const { pipe, exited } = await start(CAP);
    // FILE.1 will end with the first two bytes of "€" (e2 82 ac), FILE start with the third.
    const head = Buffer.concat([Buffer.alloc(CAP - 1000, 'a'), Buffer.from(`${'older line\n'.repeat(100)}part one ends: `.slice(-998)), Buffer.from([0xe2, 0x82])]);
    expect(head.length).toBe(CAP);
    await write(pipe.fd, head);
    await untilSize(file, CAP);
    const rest = Buffer.concat([Buffer.from([0xac]), Buffer.from(' part two\n\x1b[31mred\x1b[0m\n')]);
    await write(pipe.fd, rest);
    await untilSize(file, rest.length);
    pipe.close();
    await within(exited, 5000, 'exit');
    expect(read(`${file}.1`).equals(head)).toBe(true);
    const tail = logTail(file, 2048);
    const written = Buffer.concat([head, rest]);
    expect(tail).toBe(
      written
        .subarray(written.length - 2048)
        .toString('utf8')
        .trim()
        .replace(/\x1b/gu, '\\x1b'),
    );
    expect(tail).toMatch(/older line\npart one ends: € part two\n\\x1b\[31mred\\x1b\[0m$/u);
    expect(tail).not.toMatch(UNSAFE);
    // A shorter tail comes from FILE alone; a missing log has none.
    expect(logTail(file, 13)).toBe('\\x1b[31mred\\x1b[0m');
    expect(logTail(path.join(dir, 'none.log'))).toBe('');
  });
});
