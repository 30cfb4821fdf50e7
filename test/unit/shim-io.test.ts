import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError, NotFoundError } from '../../src/errors.js';
import { LoggerNotReadyError, MAX_QUERY_LENGTH, openProcessIo, parseStdioUri, planStdio, type ProcessIo } from '../../src/shim/io.js';

let dir: string;
const opened: ProcessIo[] = [];
const ctx = { id: 'task-1', namespace: 'ns-a' };

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-shim-io-'));
});
afterEach(async () => {
  for (const io of opened.splice(0)) await io.close().catch(() => undefined);
  fs.rmSync(dir, { recursive: true, force: true });
});

async function open(uris: { stdin?: string; stdout?: string; stderr?: string; terminal?: boolean }, options = {}): Promise<ProcessIo> {
  const io = await openProcessIo({ stdin: '', stdout: '', stderr: '', terminal: false, ...uris }, ctx, options);
  opened.push(io);
  return io;
}

function fifo(name: string): string {
  const p = path.join(dir, name);
  execFileSync('mkfifo', ['-m', '600', p]);
  return p;
}

/** Opens a reader of a FIFO; its promise resolves with all that was read once every writer closed it. */
function readFifo(p: string): Promise<{ data: Promise<Buffer> }> {
  // Resolves once the reader's open(2) returned (containerd opens its end before Create; a reader
  // whose open came after the last writer closed would wait forever), with the data to come.
  return new Promise((resolveOpen, rejectOpen) => {
    const chunks: Buffer[] = [];
    const r = fs.createReadStream(p);
    const data = new Promise<Buffer>((resolve, reject) => {
      r.on('data', (c) => chunks.push(c as Buffer));
      r.on('end', () => resolve(Buffer.concat(chunks)));
      r.on('error', reject);
    });
    r.once('open', () => resolveOpen({ data }));
    r.once('error', rejectOpen);
  });
}

function collect(stream: Readable): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => resolve(Buffer.concat(chunks)));
    stream.on('error', reject);
  });
}

/** 1 MiB of numbered 16-byte records, so that a lost, doubled or reordered chunk shows. */
function numbered(records = 65536): Buffer {
  const buf = Buffer.alloc(records * 16);
  for (let i = 0; i < records; i++) buf.write(`${String(i).padStart(15, '0')}\n`, i * 16, 'latin1');
  return buf;
}

async function writeAll(stream: NodeJS.WritableStream, data: Buffer, chunk = 8192): Promise<void> {
  for (let off = 0; off < data.length; off += chunk) {
    if (!stream.write(data.subarray(off, off + chunk))) await new Promise((r) => stream.once('drain', r));
  }
}

const pause = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('stdio URIs', () => {
  it('parses containerd\'s forms', () => {
    expect(parseStdioUri('stdout', '')).toEqual({ kind: 'none' });
    expect(parseStdioUri('stdout', '/run/containerd/fifo/1/x-stdout')).toEqual({ kind: 'fifo', path: '/run/containerd/fifo/1/x-stdout' });
    expect(parseStdioUri('stdout', 'file:///var/log/pods/a%20b/0.log')).toEqual({ kind: 'file', path: '/var/log/pods/a b/0.log' });
    expect(parseStdioUri('stdout', 'binary:///usr/bin/logger?mode=json&dest=%2Fvar%2Flog&flag')).toEqual({
      kind: 'binary',
      path: '/usr/bin/logger',
      args: ['mode', 'json', 'dest', '/var/log', 'flag', ''],
    });
  });

  it.each([
    ['relative path', 'fifo/stdout', /neither an absolute FIFO path/],
    ['unknown scheme', 'tcp://127.0.0.1:9', /unknown stdio scheme "tcp"/],
    ['file with a host', 'file://host/var/log/x', /no host/],
    ['file with ..', 'file:///var/log/../../etc/shadow', /normalised path/],
    ['escaped ..', 'file:///var/log/%2e%2e/x', /normalised path/],
    ['fifo with ..', '/run/x/../y', /normalised path/],
    ['trailing slash', 'file:///var/log/', /normalised path/],
    ['file with a query', 'file:///var/log/x?a=b', /takes no query/],
    ['query too long', `binary:///bin/logger?a=${'x'.repeat(MAX_QUERY_LENGTH)}`, /query is longer/],
    ['too many parameters', `binary:///bin/logger?${Array.from({ length: 40 }, (_, i) => `k${i}=v`).join('&')}`, /more than 32 parameters/],
    ['URI too long', `/${'a'.repeat(5000)}`, /longer than 4096/],
    ['bad escape', 'file:///var/%zz', /bad %-escape/],
  ])('refuses a %s', (_name, uri, message) => {
    let error: unknown;
    try {
      parseStdioUri('stdout', uri);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect((error as InvalidArgumentError).field).toBe('stdout');
    expect((error as Error).message).toMatch(message);
  });

  it('cross-checks the three: stdin only a FIFO, a logger named by stdout, stderr dropped with a terminal', () => {
    expect(() => planStdio({ stdin: 'file:///tmp/in', stdout: '', stderr: '', terminal: false })).toThrow(/stdin is a FIFO path/);
    expect(() => planStdio({ stdin: '', stdout: '', stderr: 'binary:///bin/l', terminal: false })).toThrow(/named by stdout/);
    expect(() => planStdio({ stdin: '', stdout: 'binary:///bin/l', stderr: 'file:///tmp/e', terminal: false })).toThrow(/same URI or empty/);
    expect(planStdio({ stdin: '', stdout: 'binary:///bin/l?a=1', stderr: 'binary:///bin/l?a=1', terminal: false }).stderr.kind).toBe('binary');
    expect(planStdio({ stdin: '', stdout: '/f/out', stderr: '/f/err', terminal: true }).stderr).toEqual({ kind: 'none' });
  });
});

describe('openProcessIo: FIFOs', () => {
  it('passes 1 MiB through a stdout FIFO complete and in order, and close() waits for it', async () => {
    const out = fifo('out');
    const io = await open({ stdout: out });
    const { data: read } = await readFifo(out);
    const data = numbered();
    const started = process.hrtime.bigint();
    await writeAll(io.stdout!, data);
    await io.close();
    const got = await read;
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    console.log(`1 MiB through a FIFO in ${ms.toFixed(1)} ms (${(1000 / ms).toFixed(1)} MiB/s)`);
    expect(got.length).toBe(data.length);
    expect(got.equals(data)).toBe(true);
  });

  it('keeps what was written before the reader attached (stdout and stderr)', async () => {
    const out = fifo('out');
    const err = fifo('err');
    const io = await open({ stdout: out, stderr: err });
    io.stdout!.write('early line\n');
    io.stderr!.write('early error\n');
    await pause(50);
    const { data: readOut } = await readFifo(out);
    const { data: readErr } = await readFifo(err);
    await io.close();
    expect((await readOut).toString()).toBe('early line\n');
    expect((await readErr).toString()).toBe('early error\n');
  });

  it('writes more than the pipe holds before a reader exists, and delivers all once it attaches', async () => {
    const out = fifo('out');
    const io = await open({ stdout: out });
    const data = numbered();
    const writing = writeAll(io.stdout!, data);
    await pause(100); // the pipe is full, writes are queued
    const { data: read } = await readFifo(out);
    await writing;
    await io.close();
    expect((await read).equals(data)).toBe(true);
  });

  it('close() waits while nobody reads a full FIFO; close({ force }) drops the rest, and the plain close() then rejects', async () => {
    const out = fifo('out');
    const io = await open({ stdout: out });
    io.stdout!.write(numbered()); // 1 MiB, far more than the pipe holds
    let settled = false;
    const plain = io.close().then(
      () => (settled = true),
      (error: unknown) => {
        settled = true;
        throw error;
      },
    );
    await pause(200);
    expect(settled).toBe(false);
    await io.close({ force: true });
    await expect(plain).rejects.toThrow(/not fully delivered/);
    // Our end is closed: what the pipe held is lost with it (no end of the FIFO is open now), and
    // a new non-blocking reader gets EOF at once, nothing of the megabyte.
    const r = fs.openSync(out, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    try {
      expect(fs.readSync(r, Buffer.alloc(16))).toBe(0);
    } finally {
      fs.closeSync(r);
    }
  });

  it('stdin: nothing ends before containerd\'s writer opens; data then EOF when it closes', async () => {
    const input = fifo('in');
    const io = await open({ stdin: input });
    let ended = false;
    io.stdin!.on('end', () => (ended = true));
    const got = collect(io.stdin!);
    await pause(100);
    expect(ended).toBe(false);
    const w = fs.openSync(input, 'w');
    fs.writeSync(w, 'hello\n');
    fs.closeSync(w);
    expect((await got).toString()).toBe('hello\n');
  });

  it('closeStdin passes on what is still in the FIFO, then ends stdin (the writer still open)', async () => {
    const input = fifo('in');
    const io = await open({ stdin: input });
    const got = collect(io.stdin!);
    const w = fs.openSync(input, 'w');
    try {
      fs.writeSync(w, 'first\n');
      await pause(50);
      // Written and CloseIO'd in the same tick: the event loop has not read it yet.
      fs.writeSync(w, 'unread tail\n');
      io.closeStdin();
      expect((await got).toString()).toBe('first\nunread tail\n');
    } finally {
      fs.closeSync(w);
    }
  });

  it('refuses a stdout that is not a FIFO, and names a missing one', async () => {
    fs.writeFileSync(path.join(dir, 'plain'), '');
    await expect(open({ stdout: path.join(dir, 'plain') })).rejects.toThrow(InvalidArgumentError);
    await expect(open({ stdout: path.join(dir, 'plain') })).rejects.toThrow(/is not a FIFO/);
    await expect(open({ stdout: path.join(dir, 'missing') })).rejects.toThrow(NotFoundError);
  });

  it('closes what it opened when a later stream fails (stdin FIFO gets EOF at once)', async () => {
    const input = fifo('in');
    const out = fifo('out');
    await expect(open({ stdin: input, stdout: out, stderr: path.join(dir, 'missing') })).rejects.toThrow(NotFoundError);
    // Our read end of stdout is closed: a reader of it sees EOF as soon as no writer is left.
    const w = fs.openSync(out, fs.constants.O_RDWR);
    const r = fs.openSync(out, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    fs.closeSync(w);
    expect(fs.readSync(r, Buffer.alloc(8))).toBe(0);
    fs.closeSync(r);
  });

  it('with a terminal there is no stderr', async () => {
    const io = await open({ stdout: fifo('out'), stderr: fifo('err'), terminal: true });
    expect(io.stdout).not.toBeNull();
    expect(io.stderr).toBeNull();
  });
});

describe('openProcessIo: file://', () => {
  it('appends stdout and stderr to one file (0600, parent dirs made)', async () => {
    const file = path.join(dir, 'logs', 'pod', '0.log');
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, 'before\n');
    fs.chmodSync(file, 0o644);
    const io = await open({ stdout: `file://${file}`, stderr: `file://${file}` });
    expect(io.stderr).toBe(io.stdout);
    io.stdout!.write('out 1\n');
    io.stderr!.write('err 1\n');
    await io.close();
    expect(fs.readFileSync(file, 'utf8')).toBe('before\nout 1\nerr 1\n');

    const fresh = path.join(dir, 'new', 'deeper', 'x.log');
    const io2 = await open({ stdout: `file://${fresh}` });
    const data = numbered();
    await writeAll(io2.stdout!, data);
    await io2.close();
    expect(fs.statSync(fresh).mode & 0o777).toBe(0o600);
    expect(fs.readFileSync(fresh).equals(data)).toBe(true);
  });
});

describe('openProcessIo: binary://', () => {
  function logger(name: string, body: string): string {
    const p = path.join(dir, name);
    fs.writeFileSync(p, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
    return p;
  }

  it('runs the logger with the query as arguments, the ids in its environment, fd 3/4 the output', async () => {
    const rec = path.join(dir, 'rec');
    fs.mkdirSync(rec);
    const bin = logger(
      'logger',
      [
        `echo "$CONTAINER_ID|$CONTAINER_NAMESPACE|$#|$*" > ${rec}/args`,
        `/usr/bin/env > ${rec}/env`,
        `/bin/cat <&3 4<&- 5>&- > ${rec}/out &`,
        `/bin/cat <&4 3<&- 5>&- > ${rec}/err &`,
        'exec 3<&- 4<&- 5>&-',
        'wait',
      ].join('\n'),
    );
    const uri = `binary://${bin}?mode=json&dest=a%20b`;
    const io = await open({ stdout: uri, stderr: uri });
    const data = numbered();
    await Promise.all([writeAll(io.stdout!, data), writeAll(io.stderr!, Buffer.from('an error\n'))]);
    await io.close();
    // close() returned after the logger exited: everything is in its files.
    expect(fs.readFileSync(path.join(rec, 'args'), 'utf8')).toBe('task-1|ns-a|4|mode json dest a b\n');
    // Only the two ids, nothing of the shim's own environment (the variables a shell sets itself aside).
    const env = fs.readFileSync(path.join(rec, 'env'), 'utf8').trim().split('\n').filter((l) => !/^(PWD|SHLVL|_|OLDPWD)=/u.test(l));
    expect(env.sort()).toEqual(['CONTAINER_ID=task-1', 'CONTAINER_NAMESPACE=ns-a']);
    expect(fs.readFileSync(path.join(rec, 'out')).equals(data)).toBe(true);
    expect(fs.readFileSync(path.join(rec, 'err'), 'utf8')).toBe('an error\n');
  });

  it('a logger that never closes fd 5 is a LoggerNotReadyError, and is killed', async () => {
    const pidFile = path.join(dir, 'pid');
    const bin = logger('stuck', `echo $$ > ${pidFile}\nexec /bin/sleep 60`);
    let error: unknown;
    try {
      await open({ stdout: `binary://${bin}` }, { readyTimeoutMs: 300 });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(LoggerNotReadyError);
    expect((error as Error).message).toMatch(/signalling ready/);
    const pid = Number(fs.readFileSync(pidFile, 'utf8'));
    expect(() => process.kill(pid, 0)).toThrow(/ESRCH/);
  });

  it('a logger that dies without reading: close() rejects (output lost), nothing hangs', async () => {
    const bin = logger('quitter', 'exec 5>&-\nexit 0');
    const io = await open({ stdout: `binary://${bin}` });
    io.stdout!.write(numbered());
    await expect(io.close()).rejects.toThrow(/not fully delivered/);
  });

  it('a logger that is not there fails the open', async () => {
    await expect(open({ stdout: `binary://${dir}/no-such-logger` })).rejects.toThrow(/cannot start the logging binary/);
  });
});
