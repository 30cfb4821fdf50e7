/**
 * stdio-throughput: bytes per second from a container's stdout to a Node consumer on the host,
 * against a raw virtio-serial copy in the same VM.
 *
 * The sandbox gets a spare virtio-serial port (`extraDevices`, name `vmpod-bench.raw`) bound
 * to a unix socket this process reads raw. A first container finds the port's major:minor in
 * /sys/class/virtio-ports/*\/dev; the bundle (busybox-static, config.json by `runc spec`) then
 * gets that device through OCI `linux.devices`, as /dev/vbraw. Variants, interleaved after one
 * warm-up round, each moving the same bytes (`dd if=/dev/zero bs=64k count=N`) from a
 * container of that bundle:
 * - vmpod: dd to stdout, with the sandbox's defaults: the container's stdout is a stream port
 *   of its own (src/sandbox/stream-ports.ts); Node reads the container's `stdout` stream (the
 *   run fails if the container did not get a stream port);
 * - vmpod-nolog: the same without the container's log (`log: false`; docs/logs.md): what the
 *   log costs the default path;
 * - vmpod-agent: the same with `stdio: { transport: 'agent' }`: a pipe read by the agent and
 *   multiplexed over the agent's virtio-serial port (the only path before stream ports);
 * - raw-virtio-serial: dd of=/dev/vbraw; Node reads the spare port's socket;
 * - raw-virtio-serial-piped (breakdown): `dd | dd of=/dev/vbraw`, the same pipe hop in the guest
 *   as vmpod's (container -> pipe -> reader -> port) but without the agent.
 * Throughput is measured on the host from the first byte to the last, so container start-up
 * is not counted: (bytes after the first chunk) / (time from first to last byte), in MB/s
 * (10^6 bytes). Every byte is counted; a short or long transfer fails the run.
 *
 * Usage: npm run bench -- stdio-throughput [RUNS] [--mib N] [--cache GUEST_CACHE_DIR]
 *        (default 5 runs of 32 MiB)
 */
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { Sandbox, type InitStdioOptions } from '../src/sandbox/index.js';
import { DirectStreamReadable } from '../src/agent/direct-stream.js';
import { busyboxBundle } from './lib/bundle.js';
import { withCleanup } from './lib/cleanup.js';
import { benchArgs, interleave } from './lib/interleave.js';
import { machineFacts } from './lib/machine.js';
import { ratios, report } from './lib/report.js';
import { benchStateDir } from './lib/sandbox.js';

const USAGE = 'usage: npm run bench -- stdio-throughput [RUNS] [--mib N] [--cache GUEST_CACHE_DIR]';
const PORT_NAME = 'vmpod-bench.raw';
const BLOCK = 64 * 1024;

/**
 * Counts bytes arriving on a stream until `expected` have come; the rate excludes the first
 * chunk. Bytes while no measurement is armed are remembered and fail the next one.
 */
class Meter {
  #got = 0;
  #first = 0;
  #firstAt = 0;
  #expected = 0;
  #stray = 0;
  #done: ((error?: Error) => void) | undefined;

  /** Arms the meter for `expected` bytes; resolves with MB/s when they are in. */
  expect(expected: number, signal: AbortSignal): Promise<number> {
    if (this.#stray > 0) return Promise.reject(new Error(`${this.#stray} bytes arrived between measurements`));
    this.#got = 0;
    this.#expected = expected;
    return new Promise<number>((resolve, reject) => {
      const onAbort = (): void => this.abort(signal.reason as Error);
      signal.addEventListener('abort', onAbort, { once: true });
      this.#done = (error) => {
        this.#done = undefined;
        signal.removeEventListener('abort', onAbort);
        if (error) reject(error);
        else resolve((this.#got - this.#first) / 1e6 / ((performance.now() - this.#firstAt) / 1000));
      };
    });
  }

  feed(chunk: Buffer): void {
    if (this.#done === undefined) {
      this.#stray += chunk.length;
      return;
    }
    if (this.#got === 0) {
      this.#first = chunk.length;
      this.#firstAt = performance.now();
    }
    this.#got += chunk.length;
    if (this.#got > this.#expected) this.#done(new Error(`got ${this.#got} bytes, expected ${this.#expected}`));
    else if (this.#got === this.#expected) this.#done();
  }

  /** Fails the pending measurement, if any (the stream ended, the run failed). */
  abort(error: Error): void {
    this.#done?.(error);
  }
}

async function text(stream: Readable | null): Promise<string> {
  let out = '';
  for await (const chunk of stream ?? []) out += (chunk as Buffer).toString();
  return out;
}

export default async function main(args: string[]): Promise<void> {
  const { runs, options } = benchArgs(args, 5, { mib: '32', cache: '' }, USAGE);
  const mib = Number(options.mib);
  if (!Number.isInteger(mib) || mib < 1 || mib > 4096) throw new Error(`--mib must be 1 to 4096\n${USAGE}`);
  const count = (mib * 1024 * 1024) / BLOCK;
  const bytes = count * BLOCK;
  const facts = await machineFacts();

  await withCleanup(async (cleanup) => {
    const { signal } = cleanup;
    const work = await fs.mkdtemp(path.join(os.tmpdir(), 'vb-io-'));
    cleanup.add(`work dir ${work}`, () => fs.rm(work, { recursive: true, force: true }));
    const rawSocket = path.join(work, 'raw.sock');
    const stateDir = await benchStateDir(cleanup);
    const sandbox = await Sandbox.create(
      {
        stateDir,
        extraDevices: [{ kind: 'virtio-serial', id: 'benchraw', ports: [{ name: PORT_NAME, socket: rawSocket }] }],
        ...(options.cache ? { guest: { cacheDir: options.cache } } : {}),
      },
      { signal },
    );
    cleanup.add(`sandbox ${sandbox.id}`, () => sandbox.delete({ force: true }));
    await sandbox.start({ signal });

    // Which /dev/vportNpM is the spare port: ask the guest.
    const probe = await sandbox.createContainer({
      process: { args: ['sh', '-c', 'for p in /sys/class/virtio-ports/*; do echo "$(cat $p/name) $(cat $p/dev)"; done'] },
      signal,
    });
    const listing = text(probe.stdout);
    probe.stderr?.resume();
    await probe.start({ signal });
    await probe.wait({ signal });
    await probe.delete({ signal });
    const line = (await listing).split('\n').find((l) => l.startsWith(`${PORT_NAME} `));
    const match = /^\S+ (\d+):(\d+)$/u.exec(line ?? '');
    if (!match) throw new Error(`the guest shows no port ${PORT_NAME}:\n${await listing}`);
    const [major, minor] = [Number(match[1]), Number(match[2])];

    const bundle = await busyboxBundle(path.join(work, 'bundle'), (spec) => {
      spec.linux = { ...spec.linux, devices: [{ path: '/dev/vbraw', type: 'c', major, minor, fileMode: 0o600, uid: 0, gid: 0 }] };
    });

    // The raw port's host end: connected once, read for the whole run.
    const raw = new Meter();
    const socket = net.createConnection(rawSocket);
    cleanup.add('raw port connection', () => socket.destroy());
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    socket.on('data', (chunk: Buffer) => raw.feed(chunk));
    socket.on('close', () => raw.abort(new Error('the raw port socket closed')));
    socket.on('error', (error) => raw.abort(error));

    async function run(argv: string[], shared: Meter | undefined, stdio?: InitStdioOptions, log = true): Promise<number> {
      const container = await sandbox.createContainer({ bundle, process: { args: argv }, ...(stdio ? { stdio } : {}), ...(log ? {} : { log: false }), signal });
      const direct = container.stdout instanceof DirectStreamReadable;
      if (!shared && direct !== (stdio?.transport !== 'agent')) {
        await container.delete({ force: true, signal });
        throw new Error(`the container's stdout ${direct ? 'took' : 'did not take'} a stream port`);
      }
      const meter = shared ?? new Meter();
      try {
        const errors = text(container.stderr);
        const rate = meter.expect(bytes, signal);
        rate.catch(() => undefined); // awaited below, after the exit status
        if (shared) {
          container.stdout?.resume();
        } else {
          container.stdout!.on('data', (chunk: Buffer) => meter.feed(chunk));
          container.stdout!.on('end', () => meter.abort(new Error('stdout ended early')));
        }
        await container.start({ signal });
        const status = await container.wait({ signal });
        if (status.exitCode !== 0) throw new Error(`${argv.join(' ')} exited ${status.exitCode}: ${await errors}`);
        // The last bytes may still be on their way to the host.
        const timeout = setTimeout(() => meter.abort(new Error(`not all ${bytes} bytes arrived within 60 s of the exit`)), 60_000);
        try {
          return await rate;
        } finally {
          clearTimeout(timeout);
        }
      } finally {
        meter.abort(new Error('the container is gone'));
        await container.delete({ force: true, signal });
      }
    }

    const dd = ['dd', 'if=/dev/zero', `bs=${BLOCK}`, `count=${count}`];
    const samples = await interleave(
      runs,
      [
        ['vmpod', () => run(dd, undefined)],
        ['vmpod-nolog', () => run(dd, undefined, undefined, false)],
        ['vmpod-agent', () => run(dd, undefined, { transport: 'agent' })],
        ['raw-virtio-serial', () => run([...dd, 'of=/dev/vbraw'], raw)],
        ['raw-virtio-serial-piped', () => run(['sh', '-c', `${dd.join(' ')} | dd of=/dev/vbraw bs=${BLOCK}`], raw)],
      ],
      { signal },
    );
    const results = samples.results();
    report(
      'stdio-throughput',
      'mb_per_s',
      runs,
      results,
      ratios(results, [
        ['vmpod', 'raw-virtio-serial'],
        ['vmpod', 'vmpod-nolog'],
        ['vmpod-agent', 'raw-virtio-serial'],
        ['vmpod-agent', 'raw-virtio-serial-piped'],
        ['raw-virtio-serial-piped', 'raw-virtio-serial'],
      ]),
      {
        machine: facts,
        bytes_per_run: bytes,
        vm: { machine: sandbox.config.machine, cpus: 1, memory_mib: sandbox.config.memoryMiB, stream_ports: sandbox.config.streamPorts },
      },
    );
  });
}
