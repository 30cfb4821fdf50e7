/**
 * The logic of `sandbox.run()` / `Sandbox.run()` without a VM: a fake sandbox whose containers
 * are scripted here (their stdio are PassThrough streams). What is checked: the container config
 * made from each kind of spec, the output kept up to the cap (the rest drained, `truncated`
 * set), both encodings, stdin input, the container deleted on every path (success, failure,
 * abort, deadline), the throwaway sandbox deleted likewise, and bad input refused before
 * anything is made. The real thing runs in test/privileged/sandbox/run-inspect.test.ts.
 */
import { PassThrough, type Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import type { ExitStatus } from '../../src/agent/messages.js';
import type { Container } from '../../src/container/container.js';
import type { ContainerConfig } from '../../src/sandbox/containers.js';
import { runContainer, runContainerConfig, runInNewSandbox, type ThrowawaySandbox } from '../../src/sandbox/run.js';

/** What one fake container does once started: write its outputs, then exit (or never). */
interface Behaviour {
  stdout?: (Buffer | string)[];
  stderr?: (Buffer | string)[];
  /** Echo stdin to stdout before exiting. */
  cat?: boolean;
  exit?: ExitStatus | 'never';
  failStart?: Error;
}

class FakeSandbox implements ThrowawaySandbox {
  readonly configs: ContainerConfig[] = [];
  readonly log: string[] = [];
  constructor(private readonly behaviour: Behaviour) {}

  async start(): Promise<void> {
    this.log.push('sandbox start');
  }

  async delete(options: { force?: boolean }): Promise<void> {
    this.log.push(`sandbox delete force=${options.force}`);
  }

  async createContainer(config: ContainerConfig): Promise<Container> {
    this.configs.push(config);
    const b = this.behaviour;
    const log = this.log;
    const stdin = config.stdio?.stdin ? new PassThrough() : null;
    const stdout = new PassThrough();
    const stderr = config.process?.terminal ? null : new PassThrough();
    let exited: (status: ExitStatus) => void = () => undefined;
    const exit = new Promise<ExitStatus>((resolve) => (exited = resolve));
    const fake = {
      id: 'c1',
      stdin: stdin as Writable | null,
      stdout,
      stderr,
      async start() {
        log.push('container start');
        if (b.failStart) throw b.failStart;
        for (const chunk of b.stdout ?? []) stdout.write(chunk);
        for (const chunk of b.stderr ?? []) stderr?.write(chunk);
        if (b.cat && stdin) for await (const chunk of stdin) stdout.write(chunk);
        if (b.exit !== 'never') {
          stdout.end();
          stderr?.end();
          exited(b.exit ?? { exitCode: 0, signal: 0, oomKilled: false });
        }
      },
      wait(options: { signal?: AbortSignal } = {}) {
        const { signal } = options;
        if (!signal) return exit;
        return Promise.race([
          exit,
          new Promise<never>((_, reject) => {
            if (signal.aborted) reject(new Error('aborted wait'));
            signal.addEventListener('abort', () => reject(Object.assign(new Error('aborted wait'), { cause: signal.reason })), { once: true });
          }),
        ]);
      },
      async delete(options: { force?: boolean }) {
        log.push(`container delete force=${options.force}`);
        stdout.destroy();
        stderr?.destroy();
      },
    };
    return fake as unknown as Container;
  }
}

describe('the container config of a run', () => {
  it('runs an array as the command on the builtin rootfs', () => {
    expect(runContainerConfig(['uname', '-r'], false)).toEqual({ process: { args: ['uname', '-r'] }, stdio: { stdin: false, stdout: true, stderr: true } });
  });

  it('takes process fields at the top level or in process, with the rest of a container config', () => {
    expect(runContainerConfig({ bundle: '/b', args: ['ls'], env: ['A=1'], process: { cwd: '/tmp' }, stdio: { transport: 'agent' }, hostname: 'h' }, true)).toEqual({
      bundle: '/b',
      hostname: 'h',
      process: { cwd: '/tmp', args: ['ls'], env: ['A=1'] },
      stdio: { stdin: true, stdout: true, stderr: true, transport: 'agent' },
    });
  });

  it('refuses a field given twice, a bad command, a signal in the spec', () => {
    expect(() => runContainerConfig({ args: ['a'], process: { args: ['b'] } }, false)).toThrow(/run\.args: given twice/u);
    expect(() => runContainerConfig([], false)).toThrow(/run\.args/u);
    expect(() => runContainerConfig([1 as unknown as string], false)).toThrow(/run\.args/u);
    expect(() => runContainerConfig('ls' as unknown as string[], false)).toThrow(/give the command/u);
    expect(() => runContainerConfig({ args: ['a'], signal: AbortSignal.timeout(1) } as never, false)).toThrow(/run\.signal: goes in the options/u);
  });
});

describe('runContainer', () => {
  it('returns the exit status and both outputs as strings, and deletes the container', async () => {
    const sandbox = new FakeSandbox({ stdout: ['hel', 'lo\n'], stderr: ['warn\n'], exit: { exitCode: 3, signal: 0, oomKilled: false } });
    const r = await runContainer(sandbox, ['x']);
    expect(r).toEqual({ exitCode: 3, signal: 0, oomKilled: false, stdout: 'hello\n', stderr: 'warn\n', truncated: { stdout: false, stderr: false }, containerId: 'c1' });
    expect(sandbox.log).toEqual(['container start', 'container delete force=true']);
  });

  it('gives Buffers with encoding "buffer" (bytes that are not UTF-8 kept as they are)', async () => {
    const bytes = Buffer.from([0xff, 0x00, 0xfe]);
    const r = await runContainer(new FakeSandbox({ stdout: [bytes] }), ['x'], { encoding: 'buffer' });
    expect(Buffer.isBuffer(r.stdout)).toBe(true);
    expect(r.stdout.equals(bytes)).toBe(true);
    expect(r.stderr).toEqual(Buffer.alloc(0));
  });

  it('keeps the first maxOutputBytes of each output and drains the rest', async () => {
    const sandbox = new FakeSandbox({ stdout: ['abcdef', 'ghij'], stderr: ['12345'] });
    const r = await runContainer(sandbox, ['x'], { maxOutputBytes: 5 });
    expect(r.stdout).toBe('abcde');
    expect(r.stderr).toBe('12345');
    expect(r.truncated).toEqual({ stdout: true, stderr: false });
    const none = await runContainer(new FakeSandbox({ stdout: ['a'] }), ['x'], { maxOutputBytes: 0 });
    expect(none).toMatchObject({ stdout: '', truncated: { stdout: true, stderr: false } });
  });

  it('writes input to stdin and closes it', async () => {
    const sandbox = new FakeSandbox({ cat: true });
    const r = await runContainer(sandbox, ['cat'], { input: 'in put\n' });
    expect(r.stdout).toBe('in put\n');
    expect(sandbox.configs[0]!.stdio).toMatchObject({ stdin: true });
  });

  it('has an empty stderr with a terminal', async () => {
    const r = await runContainer(new FakeSandbox({ stdout: ['tty\r\n'] }), { args: ['x'], terminal: true });
    expect(r).toMatchObject({ stdout: 'tty\r\n', stderr: '' });
  });

  it('kills and deletes the container when the signal aborts, and rejects with its error', async () => {
    const sandbox = new FakeSandbox({ stdout: ['partial'], exit: 'never' });
    const controller = new AbortController();
    const run = runContainer(sandbox, ['x'], { signal: controller.signal });
    setTimeout(() => controller.abort(new Error('stop it')), 20);
    await expect(run).rejects.toMatchObject({ message: 'aborted wait', cause: { message: 'stop it' } });
    expect(sandbox.log).toEqual(['container start', 'container delete force=true']);
  });

  it('turns its deadline into a TimeoutError, the container deleted', async () => {
    const sandbox = new FakeSandbox({ exit: 'never' });
    await expect(runContainer(sandbox, ['x'], { timeoutMs: 30 })).rejects.toMatchObject({ code: 'ERR_VMPOD_TIMEOUT', message: 'running a container did not finish within 30 ms' });
    expect(sandbox.log).toEqual(['container start', 'container delete force=true']);
  });

  it('deletes the container when it fails to start, and rejects with that failure', async () => {
    const sandbox = new FakeSandbox({ failStart: new Error('no such command') });
    await expect(runContainer(sandbox, ['x'])).rejects.toThrow('no such command');
    expect(sandbox.log).toEqual(['container start', 'container delete force=true']);
  });

  it('refuses bad options before making anything', async () => {
    const sandbox = new FakeSandbox({});
    await expect(runContainer(sandbox, ['x'], { maxOutputBytes: -1 })).rejects.toThrow(/maxOutputBytes/u);
    await expect(runContainer(sandbox, ['x'], { encoding: 'latin1' as 'utf8' })).rejects.toThrow(/encoding/u);
    await expect(runContainer(sandbox, ['x'], { input: 5 as unknown as string })).rejects.toThrow(/input/u);
    expect(sandbox.configs).toEqual([]);
  });
});

describe('runInNewSandbox', () => {
  it('makes, starts, runs in and deletes a sandbox', async () => {
    const sandbox = new FakeSandbox({ stdout: ['ok'] });
    const r = await runInNewSandbox(async () => sandbox, ['x']);
    expect(r.stdout).toBe('ok');
    expect(sandbox.log).toEqual(['sandbox start', 'container start', 'container delete force=true', 'sandbox delete force=true']);
  });

  it('deletes the sandbox on a deadline that ends the run, with a TimeoutError naming the whole call', async () => {
    const sandbox = new FakeSandbox({ exit: 'never' });
    await expect(runInNewSandbox(async () => sandbox, ['x'], { timeoutMs: 30 })).rejects.toMatchObject({
      code: 'ERR_VMPOD_TIMEOUT',
      message: 'running a container in a new sandbox did not finish within 30 ms',
    });
    expect(sandbox.log).toEqual(['sandbox start', 'container start', 'container delete force=true', 'sandbox delete force=true']);
  });

  it('checks its input before making a sandbox', async () => {
    let made = 0;
    const create = async (): Promise<FakeSandbox> => (made++, new FakeSandbox({}));
    await expect(runInNewSandbox(create, [])).rejects.toThrow(/run\.args/u);
    await expect(runInNewSandbox(create, ['x'], { maxOutputBytes: 1.5 })).rejects.toThrow(/maxOutputBytes/u);
    expect(made).toBe(0);
  });
});
