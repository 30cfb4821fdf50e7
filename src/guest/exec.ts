/**
 * Runs the helper programs of the builder (apt-cache, apt-get, dpkg-deb, lz4, depmod) with
 * argument arrays, never a shell, and turns a failure into a {@link CommandError}.
 *
 * @internal
 * @module
 */
import { spawn } from 'node:child_process';
import { AbortError } from '../errors.js';
import { CommandError } from './errors.js';

/** Options of {@link run}. */
export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  signal?: AbortSignal | undefined;
  /** Write stdout to this fd instead of capturing it. */
  stdoutFd?: number;
  /** Exit codes that count as success (default [0]). */
  okCodes?: readonly number[];
}

/** Captured output is bounded: a runaway tool cannot exhaust memory. */
const MAX_CAPTURE = 16 * 1024 * 1024;

/** Runs `command args...`; resolves with its stdout (unless redirected). */
export function run(command: string, args: readonly string[], options: RunOptions = {}): Promise<string> {
  const { signal } = options;
  if (signal?.aborted) return Promise.reject(new AbortError(command, { cause: signal.reason }));
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: options.env ?? { ...process.env, LC_ALL: 'C' },
      stdio: ['ignore', options.stdoutFd ?? 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    let outLength = 0;
    let err = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      if (outLength + chunk.length <= MAX_CAPTURE) out.push(chunk);
      outLength += chunk.length;
    });
    child.stderr?.on('data', (chunk: Buffer) => {
      err = (err + chunk.toString()).slice(-8192);
    });
    const onAbort = (): void => {
      child.kill('SIGKILL');
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    child.on('error', (cause) => {
      signal?.removeEventListener('abort', onAbort);
      reject(new CommandError(command, args, null, String(cause.message), { cause }));
    });
    child.on('close', (code) => {
      signal?.removeEventListener('abort', onAbort);
      if (signal?.aborted) {
        reject(new AbortError(command, { cause: signal.reason }));
      } else if (code !== null && (options.okCodes ?? [0]).includes(code)) {
        resolve(Buffer.concat(out).toString());
      } else {
        reject(new CommandError(command, args, code, err));
      }
    });
  });
}
