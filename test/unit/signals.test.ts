/**
 * abortOnSignals in a real process: a script (run by Node with tsx's loader, one process, as the
 * examples are) holds an `await using` resource and waits on a call that takes the AbortSignal;
 * the test sends it signals and checks what a user would see: the call aborted with the
 * InterruptedError as reason, the resource disposed, the exit code 128 + N, a second signal
 * ending the process at once. No VM: the "call" is a promise that honours the signal.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { abortOnSignals } from '../../src/signals.js';

let dir: string;

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-signals-'));
});

afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

/**
 * The script: prints `ready` once its handlers are in, then waits in an abortable call inside an
 * `await using` scope; its disposal prints `disposed` after `disposeMs` (or never ends: -1).
 */
function script(options: { disposeMs: number; body?: string; signals?: string[] }): string {
  return `
import { abortOnSignals, InterruptedError } from ${JSON.stringify(path.resolve('src/signals.ts'))};
const signal = abortOnSignals(${options.signals ? `{ signals: ${JSON.stringify(options.signals)} }` : ''});
function call(signal: AbortSignal): Promise<void> {
  return new Promise((_, reject) => {
    const timer = setTimeout(() => reject(new Error('never aborted')), 60_000);
    signal.addEventListener('abort', () => { clearTimeout(timer); reject(signal.reason); }, { once: true });
  });
}
${
  options.body ??
  `
{
  await using _resource = {
    async [Symbol.asyncDispose]() {
      console.log('disposing');
      if (${options.disposeMs} < 0) await new Promise(() => setInterval(() => undefined, 1000));
      await new Promise((r) => setTimeout(r, ${options.disposeMs}));
      console.log('disposed');
    },
  };
  console.log('ready');
  try {
    await call(signal);
  } catch (error) {
    console.log('aborted:', error instanceof InterruptedError, (error as InterruptedError).signal, (error as Error).message);
    throw error;
  }
}`
}
`;
}

interface Ended {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs `code` as a .mts file; `onLine(line, child)` sees each line of its stdout. */
async function run(code: string, onLine: (line: string, kill: (signal: NodeJS.Signals) => void) => void = () => undefined): Promise<Ended> {
  const file = path.join(dir, `script-${process.hrtime.bigint()}.mts`);
  await fs.writeFile(file, code);
  const child = spawn(process.execPath, ['--import', 'tsx', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  let pending = '';
  child.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
    pending += d.toString();
    for (let nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n')) {
      onLine(pending.slice(0, nl), (signal) => child.kill(signal));
      pending = pending.slice(nl + 1);
    }
  });
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  // A script that does not end (a bug under test) is killed before the test's own deadline.
  const guard = setTimeout(() => child.kill('SIGKILL'), 15_000);
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(guard);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

describe('abortOnSignals', () => {
  it('aborts the call under way on SIGINT, lets `await using` dispose, and exits 130', async () => {
    const ended = await run(script({ disposeMs: 200 }), (line, kill) => line === 'ready' && kill('SIGINT'));
    expect(ended.stdout).toBe('ready\naborted: true SIGINT interrupted by SIGINT\ndisposing\ndisposed\n');
    expect(ended.code).toBe(130);
    expect(ended.signal).toBeNull();
    expect(ended.stderr).toContain('SIGINT: cancelling and cleaning up (a second signal exits at once)');
  });

  it('exits 143 on SIGTERM', async () => {
    const ended = await run(script({ disposeMs: 0 }), (line, kill) => line === 'ready' && kill('SIGTERM'));
    expect(ended.stdout).toBe('ready\naborted: true SIGTERM interrupted by SIGTERM\ndisposing\ndisposed\n');
    expect(ended.code).toBe(143);
  });

  it('ends the process at once on a second signal, while the cleanup still runs', async () => {
    let sent = 0;
    const ended = await run(script({ disposeMs: -1 }), (line, kill) => {
      if (line === 'ready' || line === 'disposing') {
        sent++;
        kill('SIGINT');
      }
    });
    expect(sent).toBe(2);
    expect(ended.stdout).toBe('ready\naborted: true SIGINT interrupted by SIGINT\ndisposing\n');
    expect(ended.code).toBe(130);
    expect(ended.stderr).toContain('SIGINT after SIGINT: exiting now; "vmpod delete -f ID" removes what is left');
  });

  it('keeps the signal exit code when the script catches the abort and ends normally', async () => {
    const body = `
console.log('ready');
await call(signal).catch(() => console.log('caught'));
`;
    const ended = await run(script({ disposeMs: 0, body }), (line, kill) => line === 'ready' && kill('SIGTERM'));
    expect(ended.stdout).toBe('ready\ncaught\n');
    expect(ended.code).toBe(143);
  });

  it('keeps no process alive and changes nothing when no signal comes', async () => {
    const ended = await run(script({ disposeMs: 0, body: `console.log(signal.aborted, abortOnSignals() === signal);` }));
    expect(ended.stdout).toBe('false true\n');
    expect(ended.code).toBe(0);
    expect(ended.stderr).toBe('');
  });

  it('handles only the signals it is given', async () => {
    // SIGUSR2 is handled; SIGTERM then keeps its default: the process dies of it, nothing disposed.
    const handled = await run(script({ disposeMs: 0, signals: ['SIGUSR2'] }), (line, kill) => line === 'ready' && kill('SIGUSR2'));
    expect(handled.code).toBe(128 + os.constants.signals.SIGUSR2);
    expect(handled.stdout).toContain('disposed\n');
    const unhandled = await run(script({ disposeMs: 0, signals: ['SIGUSR2'] }), (line, kill) => line === 'ready' && kill('SIGTERM'));
    expect(unhandled.signal).toBe('SIGTERM');
    expect(unhandled.stdout).toBe('ready\n');
  });

  it('refuses signals a process cannot handle, before installing anything', () => {
    for (const signals of [[], ['SIGKILL'], ['SIGSTOP'], ['SIGNOPE'], ['toString']] as NodeJS.Signals[][]) {
      expect(() => abortOnSignals({ signals })).toThrow(expect.objectContaining({ code: 'ERR_VMPOD_INVALID_ARGUMENT', field: 'signals' }));
    }
    expect(process.listenerCount('SIGINT')).toBe(0);
  });
});
