/**
 * Container logs (docs/logs.md): the CRI format (src/container/log-format.ts), the in-process
 * writer and the reader (src/container/log-file.ts), and the detached writer `vmpod-logger --cri`
 * (native/logger) fed by fake stream ports. No root needed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ContainerLogReader, ContainerLogWriter, logPaths, loggedContainers, resolveLogConfig, writerActive, type LogLine, type LogOptions } from '../../src/container/log-file.js';
import { MAX_RECORD_CONTENT, encodeChunk, formatTime, parseRecord, parseRecords, parseTime } from '../../src/container/log-format.js';
import { newMarker } from '../../src/agent/direct-stream.js';
import { LOGGER_BINARY } from '../../src/host/process.js';
import { AbortError, InvalidArgumentError } from '../../src/errors.js';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-ctrlog-'));
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

/** A deterministic byte stream with NULs, ESC, CR, invalid UTF-8 and newlines. */
function bytes(length: number, seed: string): Buffer {
  const out = Buffer.alloc(length);
  for (let at = 0, n = 0; at < length; at += 32, n++) createHash('sha256').update(`${seed}:${n}`).digest().copy(out, at);
  return out;
}

/** Parses every record of an encoded chunk. */
function decode(parts: Buffer[]) {
  const parsed = parseRecords(Buffer.concat(parts));
  expect(parsed.skipped).toBe(0);
  return parsed.records;
}

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

async function lines(stream: Readable): Promise<LogLine[]> {
  const out: LogLine[] = [];
  for await (const line of stream) out.push(line as LogLine);
  return out;
}

describe('the CRI format', () => {
  it('writes one F record per line and a P record for bytes without a newline, content as is', () => {
    const ns = 1_765_141_445_123_456_789n;
    const records = decode(encodeChunk('stdout', Buffer.from('one\n\ntwo \x1b[2J\r\nthree'), ns));
    expect(records.map((r) => [r.stream, r.partial, r.content.toString('latin1')])).toEqual([
      ['stdout', false, 'one'],
      ['stdout', false, ''],
      ['stdout', false, 'two \x1b[2J\r'],
      ['stdout', true, 'three'],
    ]);
    expect(records[0]!.time).toBe('2025-12-07T21:04:05.123456789Z');
    expect(records[0]!.timeNs).toBe(ns);
    const text = Buffer.concat(encodeChunk('stderr', Buffer.from('a\n'), ns)).toString();
    expect(text).toBe('2025-12-07T21:04:05.123456789Z stderr F a\n');
  });

  it('splits a line longer than 16 KiB into P records, whose contents join to the line', () => {
    const line = Buffer.alloc(MAX_RECORD_CONTENT * 2 + 100, 'x');
    const records = decode(encodeChunk('stdout', Buffer.concat([line, Buffer.from('\n')])));
    expect(records.map((r) => [r.partial, r.content.length])).toEqual([
      [true, MAX_RECORD_CONTENT],
      [true, MAX_RECORD_CONTENT],
      [false, 100],
    ]);
    expect(Buffer.concat(records.map((r) => r.content)).equals(line)).toBe(true);
  });

  it('gives back exactly the bytes of any output (garbage included)', () => {
    const data = bytes(200_000, 'garbage');
    const records = decode(encodeChunk('stderr', data));
    const back = Buffer.concat(records.map((r) => (r.partial ? r.content : Buffer.concat([r.content, Buffer.from('\n')]))));
    expect(back.equals(data)).toBe(true);
    for (const r of records) expect(r.content.length).toBeLessThanOrEqual(MAX_RECORD_CONTENT);
  });

  it('parses times in RFC 3339 with 0-9 fraction digits and offsets, and refuses the rest', () => {
    expect(parseTime('2026-12-07T21:04:05Z')).toBe(BigInt(Date.parse('2026-12-07T21:04:05Z')) * 1_000_000n);
    expect(parseTime('2026-12-07T21:04:05.5Z')).toBe(BigInt(Date.parse('2026-12-07T21:04:05Z')) * 1_000_000n + 500_000_000n);
    expect(parseTime('2026-12-07T23:04:05.000000001+02:00')).toBe(BigInt(Date.parse('2026-12-07T21:04:05Z')) * 1_000_000n + 1n);
    for (const bad of ['', 'yesterday', '2026-12-07 21:04:05Z', '2026-12-07T21:04:05.1234567890Z', '2026-13-07T21:04:05Z']) expect(parseTime(bad)).toBeUndefined();
    const now = 1_700_000_000_000_000_001n;
    expect(parseTime(formatTime(now))).toBe(now);
  });

  it('skips lines that are not records and leaves an unfinished one for later', () => {
    const good = Buffer.concat(encodeChunk('stdout', Buffer.from('ok\n'), 1_000_000_000_000_000_000n));
    const input = Buffer.concat([
      Buffer.from('garbage\n\n2026-12-07T21:04:05Z stdin F x\n2026-12-07T21:04:05Z stdout X x\nnot-a-time stdout F x\n\xff\xfe stdout F\n'),
      good,
      Buffer.from('2026-12-07T21:04:05Z stdout F unfinis'),
    ]);
    const parsed = parseRecords(input);
    expect(parsed.records.map((r) => r.content.toString())).toEqual(['ok']);
    expect(parsed.skipped).toBe(6);
    expect(input.subarray(parsed.used).toString()).toBe('2026-12-07T21:04:05Z stdout F unfinis');
    expect(parseRecord(Buffer.from('2026-12-07T21:04:05Z stdout F '))?.content.length).toBe(0);
  });

  it('checks the sizes of a log', () => {
    expect(resolveLogConfig(undefined)).toEqual({ maxBytes: 4 * 1024 * 1024, maxFiles: 3 });
    expect(() => resolveLogConfig({ maxBytes: 1000 })).toThrow(InvalidArgumentError);
    expect(() => resolveLogConfig({ maxFiles: 0 })).toThrow(/log\.maxFiles/u);
    expect(() => resolveLogConfig({ maxFiles: 17 })).toThrow(InvalidArgumentError);
  });
});

describe('the log writer and reader', () => {
  const config = { maxBytes: 64 * 1024, maxFiles: 3 };

  function read(options: LogOptions = {}, objectMode = false): ContainerLogReader {
    return new ContainerLogReader(logPaths(dir, 'c1'), options, objectMode);
  }

  it('rotates at maxBytes and keeps maxFiles files: the disk use is bounded, what is kept is the end, in order', async () => {
    const writer = await ContainerLogWriter.open(dir, 'c1', resolveLogConfig(config));
    const written: string[] = [];
    for (let i = 0; i < 20_000; i++) {
      const line = `line ${i} ${'y'.repeat(i % 50)}\n`;
      written.push(line);
      writer.write(i % 3 === 0 ? 'stderr' : 'stdout', Buffer.from(line));
    }
    await writer.close();
    const files = fs.readdirSync(logPaths(dir, 'c1').dir).filter((f) => f.startsWith('stdio.log')).sort();
    expect(files).toEqual(['stdio.log', 'stdio.log.1', 'stdio.log.2']);
    for (const f of files) expect(fs.statSync(path.join(logPaths(dir, 'c1').dir, f)).size).toBeLessThanOrEqual(config.maxBytes);
    // The rotated files are full (the next record did not fit).
    for (const f of ['stdio.log.1', 'stdio.log.2']) expect(fs.statSync(path.join(logPaths(dir, 'c1').dir, f)).size).toBeGreaterThan(config.maxBytes - 200);
    const back = (await collect(read())).toString();
    // A contiguous end of what was written, starting at a line, every record of the three files in it.
    const records = files.flatMap((f) => parseRecords(fs.readFileSync(path.join(logPaths(dir, 'c1').dir, f))).records);
    expect(back.length).toBe(records.reduce((n, r) => n + r.content.length + 1, 0));
    expect(written.join('').endsWith(back)).toBe(true);
    expect(back.startsWith('line ')).toBe(true);
  });

  it('writes chunks of many short lines (copied) and of few long records (views) alike, across rotations', async () => {
    const writer = await ContainerLogWriter.open(dir, 'c1', resolveLogConfig(config));
    const written: Buffer[] = [];
    for (let i = 0; i < 300; i++) {
      // Alternately 200 short lines in one chunk, and a chunk of 40 KiB without a newline then one.
      const chunk = i % 2 === 0 ? Buffer.from(Array.from({ length: 200 }, (_, j) => `c${i}.${j}\n`).join('')) : Buffer.concat([Buffer.alloc(40 * 1024, 0x41 + (i % 26)), Buffer.from('\n')]);
      written.push(chunk);
      writer.write('stdout', chunk);
    }
    await writer.close();
    const files = fs.readdirSync(logPaths(dir, 'c1').dir).filter((f) => f.startsWith('stdio.log')).sort();
    expect(files).toEqual(['stdio.log', 'stdio.log.1', 'stdio.log.2']);
    for (const f of files) {
      const bytes = fs.readFileSync(path.join(logPaths(dir, 'c1').dir, f));
      expect(bytes.length).toBeLessThanOrEqual(config.maxBytes);
      const parsed = parseRecords(bytes);
      expect(parsed.skipped).toBe(0);
      expect(parsed.used).toBe(bytes.length); // whole records only
      for (const r of parsed.records) expect(r.content.length).toBeLessThanOrEqual(MAX_RECORD_CONTENT);
    }
    const back = await collect(read());
    const all = Buffer.concat(written);
    expect(all.subarray(all.length - back.length).equals(back)).toBe(true);
    expect(back.length).toBeGreaterThan(100 * 1024);
  });

  it('with maxFiles 1 keeps one file of at most maxBytes', async () => {
    const writer = await ContainerLogWriter.open(dir, 'c1', resolveLogConfig({ maxBytes: 64 * 1024, maxFiles: 1 }));
    for (let i = 0; i < 5000; i++) writer.write('stdout', Buffer.from(`${i}\n`.padStart(40, '.')));
    await writer.close();
    expect(fs.readdirSync(logPaths(dir, 'c1').dir).filter((f) => f.startsWith('stdio.log'))).toEqual(['stdio.log']);
    expect(fs.statSync(logPaths(dir, 'c1').file).size).toBeLessThanOrEqual(64 * 1024);
    expect((await collect(read({ tail: 1 }))).toString()).toBe(`${'4999\n'.padStart(40, '.')}`);
  });

  it('joins partial records, keeps the streams apart, and applies tail, since, streams and timestamps', async () => {
    const writer = await ContainerLogWriter.open(dir, 'c1', resolveLogConfig(config));
    writer.write('stdout', Buffer.from('hel'));
    writer.write('stderr', Buffer.from('err 1\n'));
    writer.write('stdout', Buffer.from('lo\nworld\n'));
    await new Promise((r) => setTimeout(r, 20));
    const between = new Date();
    await new Promise((r) => setTimeout(r, 20));
    writer.write('stderr', Buffer.from('err 2\nno newline'));
    await writer.close();

    expect((await collect(read())).toString()).toBe('err 1\nhello\nworld\nerr 2\nno newline');
    const all = await lines(read({}, true));
    expect(all.map((l) => [l.stream, l.data.toString()])).toEqual([
      ['stderr', 'err 1\n'],
      ['stdout', 'hello\n'],
      ['stdout', 'world\n'],
      ['stderr', 'err 2\n'],
      ['stderr', 'no newline'],
    ]);
    expect((await collect(read({ tail: 2 }))).toString()).toBe('err 2\nno newline');
    expect((await collect(read({ tail: 0 }))).toString()).toBe('');
    expect((await collect(read({ streams: ['stdout'] }))).toString()).toBe('hello\nworld\n');
    expect((await collect(read({ streams: ['stdout'], tail: 1 }))).toString()).toBe('world\n');
    expect((await collect(read({ since: between }))).toString()).toBe('err 2\nno newline');
    const stamped = (await collect(read({ timestamps: true, tail: 1, streams: ['stdout'] }))).toString();
    expect(stamped).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z world\n$/u);
    // A line's time is the time its first bytes came.
    expect(all[1]!.time < all[0]!.time).toBe(true);
    expect(() => read({ tail: -1 })).toThrow(InvalidArgumentError);
    expect(() => read({ since: new Date('nope') })).toThrow(InvalidArgumentError);
  });

  it('reads a log with garbage lines and a record cut short by a crash', async () => {
    const paths = logPaths(dir, 'c1');
    fs.mkdirSync(paths.dir, { recursive: true });
    fs.writeFileSync(`${paths.file}.1`, Buffer.concat([Buffer.from('\x00\x01 stdout F \xff\n'), ...encodeChunk('stdout', Buffer.from('first\n'))]));
    fs.writeFileSync(paths.file, Buffer.concat([...encodeChunk('stderr', Buffer.from('second\n')), Buffer.from('2026-12-07T21:04:05.1Z stdout F cut sh')]));
    expect((await collect(read())).toString()).toBe('first\nsecond\n');
  });

  it('copies a stream it tees without consuming it, and lets go of the lock when the streams end', async () => {
    const writer = await ContainerLogWriter.open(dir, 'c1', resolveLogConfig(config));
    const out = new PassThrough();
    const err = new PassThrough();
    writer.tee('stdout', out);
    writer.tee('stderr', err);
    expect(writerActive(logPaths(dir, 'c1'))).toBe(true);
    out.write('to the reader\n');
    err.end('bye\n');
    expect(out.read()?.toString()).toBe('to the reader\n');
    expect(await collect(err)).toEqual(Buffer.from('bye\n'));
    expect(writerActive(logPaths(dir, 'c1'))).toBe(true); // stdout is still open
    out.end('unread\n'); // its end is pushed, nobody reads it: everything is in the log all the same
    await until(() => !writerActive(logPaths(dir, 'c1')));
    expect(out.readableEnded).toBe(false);
    expect((await lines(read({}, true))).map((l) => [l.stream, l.data.toString()])).toEqual([
      ['stdout', 'to the reader\n'],
      ['stderr', 'bye\n'],
      ['stdout', 'unread\n'],
    ]);
    expect(loggedContainers(dir)).toEqual(['c1']);
  });

  it('follows: sees lines written later, goes on after rotations, ends once the writer let go', async () => {
    const writer = await ContainerLogWriter.open(dir, 'c1', resolveLogConfig({ maxBytes: 64 * 1024, maxFiles: 2 }));
    writer.write('stdout', Buffer.from('before\n'));
    const follower = read({ follow: true });
    const got: Buffer[] = [];
    follower.on('data', (c: Buffer) => got.push(c));
    const ended = new Promise((r) => follower.once('end', r));
    await until(() => Buffer.concat(got).toString() === 'before\n');
    // Each batch is smaller than a file, so the follower (polling every 200 ms) sees every rotation.
    const expected: string[] = ['before\n'];
    for (let batch = 0; batch < 6; batch++) {
      for (let i = 0; i < 600; i++) {
        const line = `b${batch} ${i} ${'z'.repeat(40)}\n`;
        expected.push(line);
        writer.write('stdout', Buffer.from(line));
      }
      await until(() => Buffer.concat(got).toString().endsWith(expected.at(-1)!));
    }
    let finished = false;
    void ended.then(() => (finished = true));
    await new Promise((r) => setTimeout(r, 500));
    expect(finished).toBe(false); // the writer is still there
    await writer.close();
    await ended;
    expect(Buffer.concat(got).toString()).toBe(expected.join(''));
  });

  it('follows through several rotations between two looks, from the rotated files that are still there', async () => {
    const writer = await ContainerLogWriter.open(dir, 'c1', resolveLogConfig({ maxBytes: 64 * 1024, maxFiles: 5 }));
    writer.write('stdout', Buffer.from('first\n'));
    const follower = read({ follow: true });
    const got: Buffer[] = [];
    follower.on('data', (c: Buffer) => got.push(c));
    const ended = new Promise((r) => follower.once('end', r));
    await until(() => Buffer.concat(got).toString() === 'first\n');
    // About 2.5 files at once (the follower looks every 200 ms): the log rotates twice meanwhile.
    const expected = ['first\n'];
    for (let i = 0; i < 3000; i++) {
      const line = `x${i} ${'q'.repeat(10)}\n`;
      expected.push(line);
      writer.write('stdout', Buffer.from(line));
    }
    expect(fs.existsSync(`${logPaths(dir, 'c1').file}.2`)).toBe(true);
    await writer.close();
    await ended;
    expect(Buffer.concat(got).toString()).toBe(expected.join(''));
  });

  it('follow of a log nobody writes ends after what is there', async () => {
    const writer = await ContainerLogWriter.open(dir, 'c1', resolveLogConfig(config));
    writer.write('stdout', Buffer.from('done\n'));
    await writer.close();
    expect((await collect(read({ follow: true }))).toString()).toBe('done\n');
    expect((await collect(new ContainerLogReader(logPaths(dir, 'none'), { follow: true })))).toEqual(Buffer.alloc(0));
  });

  it('a follower ends with an AbortError when its signal is aborted', async () => {
    const writer = await ContainerLogWriter.open(dir, 'c1', resolveLogConfig(config));
    writer.write('stdout', Buffer.from('one\n'));
    const abort = new AbortController();
    const follower = read({ follow: true, signal: abort.signal });
    const got: Buffer[] = [];
    const failed = new Promise<Error>((resolve) => follower.once('error', resolve));
    follower.on('data', (c: Buffer) => got.push(c));
    await until(() => got.length === 1);
    abort.abort(new Error('enough'));
    const error = await failed;
    expect(error).toBeInstanceOf(AbortError);
    expect((error as AbortError).code).toBe('ERR_VMPOD_ABORTED');
    expect((error.cause as Error).message).toBe('enough');
    await writer.close();
    // Aborted before it starts: nothing is read.
    const early = read({ signal: AbortSignal.abort() });
    await expect(collect(early)).rejects.toBeInstanceOf(AbortError);
  });

  it('a second writer waits for the first', async () => {
    const first = await ContainerLogWriter.open(dir, 'c1', resolveLogConfig(config));
    await expect(ContainerLogWriter.open(dir, 'c1', resolveLogConfig(config), 100)).rejects.toThrow(/writer\.lock/u);
    await first.close();
    await (await ContainerLogWriter.open(dir, 'c1', resolveLogConfig(config), 100)).close();
  });
});

async function until(check: () => boolean, timeoutMs = 20_000): Promise<void> {
  for (const deadline = Date.now() + timeoutMs; !check(); await new Promise((r) => setTimeout(r, 20))) {
    if (Date.now() > deadline) throw new Error('timed out');
  }
}

describe('vmpod-logger --cri (the detached writer)', () => {
  const children: ChildProcess[] = [];
  const servers: net.Server[] = [];
  afterEach(async () => {
    for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
  });

  /** A fake stream port: a unix socket server; resolves with the connection once the logger connects. */
  function port(name: string): { path: string; connected: Promise<net.Socket> } {
    const file = path.join(dir, `${name}.sock`);
    let resolve!: (s: net.Socket) => void;
    const connected = new Promise<net.Socket>((r) => (resolve = r));
    const server = net.createServer((s) => resolve(s));
    server.listen(file);
    servers.push(server);
    return { path: file, connected };
  }

  function logger(args: string[], env: Record<string, string>): { child: ChildProcess; stdout: () => string; exit: Promise<number | null> } {
    const child = spawn(LOGGER_BINARY, args, { env: { PATH: '/usr/bin:/bin', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let out = '';
    child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    const exit = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    return { child, stdout: () => out, exit };
  }

  async function write(socket: net.Socket, ...parts: Buffer[]): Promise<void> {
    for (const part of parts) {
      await new Promise<void>((r) => socket.write(part, () => r()));
      await new Promise((r) => setTimeout(r, 5)); // separate reads, so that markers are split across them
    }
  }

  it('writes what comes between the markers of each port as CRI records, then exits and lets go of the lock', async () => {
    const paths = logPaths(dir, 'c1');
    fs.mkdirSync(paths.dir, { recursive: true });
    const out = port('out');
    const err = port('err');
    const mOut = newMarker();
    const mErr = newMarker();
    const l = logger(['--cri', paths.dir, '65536', '3', `stdout=${out.path}`, `stderr=${err.path}`], {
      VMPOD_MARKER_STDOUT: mOut.toString('hex'),
      VMPOD_MARKER_STDERR: mErr.toString('hex'),
    });
    const [so, se] = await Promise.all([out.connected, err.connected]);
    await until(() => l.stdout() === 'ready\n');
    expect(writerActive(paths)).toBe(true);
    const garbage = bytes(5000, 'out'); // binary, with newlines and ESC
    // Leftovers of a previous stream before the start marker; the end marker split in two reads; bytes after it.
    await write(so, Buffer.from('leftover\n'), mOut.subarray(0, 10), mOut.subarray(10), Buffer.from('hello\nwor'));
    await write(se, mErr, Buffer.from('oops\n'));
    await write(so, Buffer.from('ld\n'), garbage, Buffer.from([0xff]), mOut.subarray(0, 5));
    await write(so, mOut.subarray(5), Buffer.from('after the end\n'));
    await write(se, mErr);
    expect(await l.exit).toBe(0);
    expect(writerActive(paths)).toBe(false);
    const all = await lines(new ContainerLogReader(paths, {}, true));
    const stdout = Buffer.concat(all.filter((x) => x.stream === 'stdout').map((x) => x.data));
    const stderr = Buffer.concat(all.filter((x) => x.stream === 'stderr').map((x) => x.data));
    expect(stdout.equals(Buffer.concat([Buffer.from('hello\nworld\n'), garbage, Buffer.from([0xff])]))).toBe(true);
    expect(stderr.toString()).toBe('oops\n');
    // Records have the shape the kubelet reads.
    const first = fs.readFileSync(paths.file, 'latin1').split('\n')[0]!;
    expect(first).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z std(out|err) [PF] /u);
  });

  it('keeps what was held back when the port closes without an end marker (the VM died), and rotates within maxBytes * maxFiles', async () => {
    const paths = logPaths(dir, 'c2');
    fs.mkdirSync(paths.dir, { recursive: true });
    const out = port('out2');
    const m = newMarker();
    const l = logger(['--cri', paths.dir, '65536', '2', `stdout=${out.path}`], { VMPOD_MARKER_STDOUT: m.toString('hex') });
    const so = await out.connected;
    const lots = Buffer.from(Array.from({ length: 20_000 }, (_, i) => `line ${i}\n`).join(''));
    await write(so, m, lots, Buffer.concat([Buffer.from('tail'), m.subarray(0, 3)]));
    so.end();
    expect(await l.exit).toBe(0);
    const files = fs.readdirSync(paths.dir).filter((f) => f.startsWith('stdio.log')).sort();
    expect(files).toEqual(['stdio.log', 'stdio.log.1']);
    for (const f of files) expect(fs.statSync(path.join(paths.dir, f)).size).toBeLessThanOrEqual(65536);
    expect(fs.statSync(`${paths.file}.1`).size).toBeGreaterThan(65536 - 200);
    const back = await collect(new ContainerLogReader(paths));
    const whole = Buffer.concat([lots, Buffer.from('tail'), m.subarray(0, 3)]);
    // A contiguous end (beginning at a line) of what came, the held-back bytes at its end.
    expect(back.length).toBeGreaterThan(15_000);
    expect(back.toString('latin1')).toMatch(/^line \d+\n/u);
    expect(whole.subarray(whole.length - back.length).equals(back)).toBe(true);
  });

  it('gives up on a port that sends more than 1 MiB before its start marker', async () => {
    const paths = logPaths(dir, 'c3');
    fs.mkdirSync(paths.dir, { recursive: true });
    const out = port('out3');
    const m = newMarker();
    const l = logger(['--cri', paths.dir, '65536', '2', `stdout=${out.path}`], { VMPOD_MARKER_STDOUT: m.toString('hex') });
    const so = await out.connected;
    so.on('error', () => undefined);
    for (let i = 0; i < 20; i++) so.write(Buffer.alloc(64 * 1024, 'a'));
    so.write(Buffer.concat([m, Buffer.from('not logged\n')]));
    expect(await l.exit).toBe(0);
    expect(fs.readFileSync(paths.file).length).toBe(0);
  });

  it('refuses bad arguments with a message on stdout', async () => {
    const paths = logPaths(dir, 'c4');
    fs.mkdirSync(paths.dir, { recursive: true });
    const cases: [string[], Record<string, string>, RegExp][] = [
      [['--cri', paths.dir, '100', '3', 'stdout=/x'], {}, /MAX_BYTES/u],
      [['--cri', paths.dir, '65536', '17', 'stdout=/x'], {}, /MAX_FILES/u],
      [['--cri', paths.dir, '65536', '3', 'stdin=/x'], {}, /STREAM=SOCKET/u],
      [['--cri', paths.dir, '65536', '3', 'stdout=/x'], { VMPOD_MARKER_STDOUT: 'ab' }, /marker of stdout/u],
      [['--cri', paths.dir, '65536', '3', `stdout=${path.join(dir, 'none.sock')}`], { VMPOD_MARKER_STDOUT: 'ff'.repeat(32) }, /connect/u],
    ];
    for (const [args, env, message] of cases) {
      const l = logger(args, env);
      expect(await l.exit).toBe(1);
      expect(l.stdout()).toMatch(message);
    }
  });
});
