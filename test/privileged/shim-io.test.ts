/**
 * The shim's stdio for real: a container in a vmpod VM wired to containerd-style FIFOs and a
 * logging binary through openProcessIo, as the shim's task service wires them: what a writer puts
 * in the stdin FIFO reaches the process, and everything the process writes reaches the stdout and
 * stderr FIFOs (or the logger) before close() resolves. Files live under the test's state
 * directory (prefix vmpod-st-), removed even when a test fails.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../src/sandbox/sandbox.js';
import { openProcessIo } from '../../src/shim/io.js';
import { expectNothingLeft, forceCleanup, makeStateDir, skipReason } from './sandbox/fixture.js';

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

describe.skipIf(skipReason)(`shim stdio with a VM${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  let dir: string;
  let sandbox: Sandbox;

  beforeAll(async () => {
    stateDir = await makeStateDir();
    dir = path.join(stateDir, 'io');
    fs.mkdirSync(dir);
    sandbox = await Sandbox.create({ stateDir, cpus: 1, memoryMiB: 256 });
    await sandbox.start();
  });

  afterAll(async () => {
    try {
      await sandbox?.delete({ force: true });
      await expectNothingLeft(stateDir);
    } finally {
      await forceCleanup(stateDir);
    }
  });

  const fifo = (name: string): string => {
    const p = path.join(dir, name);
    execFileSync('mkfifo', ['-m', '600', p]);
    return p;
  };

  it('stdin FIFO → the process → stdout FIFO: 8 MiB complete, stderr on its own, all there when close() resolves', async () => {
    const [stdinPath, stdoutPath, stderrPath] = [fifo('in'), fifo('out'), fifo('err')];
    const io = await openProcessIo({ stdin: stdinPath, stdout: stdoutPath, stderr: stderrPath, terminal: false }, { id: 'io-cat', namespace: 'test' });
    // containerd's side: a reader on each output FIFO, a writer on the input one.
    const { data: out } = await readFifo(stdoutPath);
    const { data: err } = await readFifo(stderrPath);
    const c = await sandbox.createContainer({ id: 'io-cat', stdio: { stdin: true }, process: { args: ['sh', '-c', 'cat; echo done >&2'] } });
    const wiring = Promise.all([pipeline(io.stdin!, c.stdin!), pipeline(c.stdout!, io.stdout!), pipeline(c.stderr!, io.stderr!)]);
    const data = Buffer.alloc(8 << 20);
    for (let i = 0; i < data.length; i += 4) data.writeUInt32LE(i, i);
    const t0 = process.hrtime.bigint();
    await c.start();
    const writer = fs.createWriteStream(stdinPath);
    writer.end(data);
    const status = await c.wait();
    await wiring;
    await io.close();
    const got = await out;
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    console.log(`8 MiB stdin FIFO → guest cat → stdout FIFO in ${ms.toFixed(0)} ms (${((8 * 1000) / ms).toFixed(1)} MiB/s)`);
    expect(status.exitCode).toBe(0);
    expect(got.length).toBe(data.length);
    expect(createHash('sha256').update(got).digest('hex')).toBe(createHash('sha256').update(data).digest('hex'));
    expect((await err).toString()).toBe('done\n');
    await c.delete();
  });

  it('CloseIO with containerd\'s writer still open ends the process\'s stdin', async () => {
    const [stdinPath, stdoutPath] = [fifo('in2'), fifo('out2')];
    const io = await openProcessIo({ stdin: stdinPath, stdout: stdoutPath, stderr: '', terminal: false }, { id: 'io-closeio', namespace: 'test' });
    const { data: out } = await readFifo(stdoutPath);
    const c = await sandbox.createContainer({ id: 'io-closeio', stdio: { stdin: true, stderr: false }, process: { args: ['sh', '-c', 'wc -c'] } });
    const wiring = Promise.all([pipeline(io.stdin!, c.stdin!), pipeline(c.stdout!, io.stdout!)]);
    await c.start();
    const w = fs.openSync(stdinPath, 'w');
    try {
      fs.writeSync(w, 'twelve bytes');
      io.closeStdin();
      expect((await c.wait()).exitCode).toBe(0);
    } finally {
      fs.closeSync(w);
    }
    await wiring;
    await io.close();
    expect((await out).toString().trim()).toBe('12');
    await c.delete();
  });

  it('a binary:// logger gets the process\'s stdout and stderr, and has exited when close() resolves', async () => {
    const rec = path.join(dir, 'rec');
    fs.mkdirSync(rec);
    const logger = path.join(dir, 'logger');
    fs.writeFileSync(
      logger,
      `#!/bin/sh\n/bin/cat <&3 4<&- 5>&- > ${rec}/out &\n/bin/cat <&4 3<&- 5>&- > ${rec}/err &\nexec 3<&- 4<&- 5>&-\nwait\necho exited > ${rec}/exit\n`,
      { mode: 0o755 },
    );
    const uri = `binary://${logger}?tag=io`;
    const io = await openProcessIo({ stdin: '', stdout: uri, stderr: uri, terminal: false }, { id: 'io-log', namespace: 'test' });
    const c = await sandbox.createContainer({ id: 'io-log', process: { args: ['sh', '-c', 'seq 1 20000; echo an error >&2'] } });
    const wiring = Promise.all([pipeline(c.stdout!, io.stdout!), pipeline(c.stderr!, io.stderr!)]);
    await c.start();
    expect((await c.wait()).exitCode).toBe(0);
    await wiring;
    await io.close();
    const lines = fs.readFileSync(path.join(rec, 'out'), 'utf8').trim().split('\n');
    expect(lines.length).toBe(20000);
    expect(lines[19999]).toBe('20000');
    expect(fs.readFileSync(path.join(rec, 'err'), 'utf8')).toBe('an error\n');
    expect(fs.readFileSync(path.join(rec, 'exit'), 'utf8')).toBe('exited\n');
    await c.delete();
  });
});
