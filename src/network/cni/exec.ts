/**
 * Runs one plugin executable: argument array (no shell), configuration on stdin, bounded
 * capture of stdout and stderr, a deadline and an AbortSignal. The plugin runs in its own
 * process group, so a timeout or an abort kills it together with any plugin it delegated to
 * (e.g. `host-local` under `bridge`).
 *
 * @internal
 * @module
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { AbortError, TimeoutError } from '../../errors.js';

/** What to run. */
export interface ExecRequest {
  /** Absolute path of the executable. */
  readonly file: string;
  /** The complete environment of the plugin. */
  readonly env: Readonly<Record<string, string>>;
  /** Written to the plugin's stdin, which is then closed. */
  readonly stdin: string;
  readonly timeoutMs: number;
  readonly signal?: AbortSignal | undefined;
  /** More stdout than this kills the plugin: a result is never that big. */
  readonly maxStdoutBytes: number;
  /** Only the last this-many bytes of stderr are kept (it is drained either way). */
  readonly maxStderrBytes: number;
  /** Names the run in errors, e.g. `CNI plugin "bridge" (ADD of network "n1")`. */
  readonly what: string;
}

/** How the plugin ended. */
export interface ExecOutcome {
  readonly exitCode: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: Buffer;
  /** The tail of stderr, decoded. */
  readonly stderr: string;
  /** Set when stdout exceeded {@link ExecRequest.maxStdoutBytes} and the plugin was killed. */
  readonly overflow: boolean;
}

/** Thrown when the executable could not be started at all (ENOENT, EACCES, ENOEXEC...). */
export class SpawnError extends Error {
  constructor(readonly errno: string, options: { cause: unknown }) {
    super(`could not be started (${errno})`, options);
  }
}

function killGroup(child: ChildProcess): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    // Already gone.
  }
}

function runOnce(req: ExecRequest): Promise<ExecOutcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(req.file, [], {
      env: req.env,
      stdio: ['pipe', 'pipe', 'pipe'],
      detached: true, // own process group: one kill reaches delegated plugins too
      windowsHide: true,
    });
    const out: Buffer[] = [];
    let outBytes = 0;
    let overflow = false;
    let err: Buffer[] = [];
    let errBytes = 0;
    let stopped: Error | undefined;
    let settled = false;

    const finish = (fn: () => void): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      req.signal?.removeEventListener('abort', onAbort);
      fn();
    };
    // A process that left the group (setsid) may still hold the pipes: once the plugin itself
    // has exited, stop waiting for them.
    const release = (): void => {
      child.stdout.destroy();
      child.stderr.destroy();
    };
    const stop = (reason: Error): void => {
      stopped ??= reason;
      killGroup(child);
      if (child.exitCode !== null || child.signalCode !== null) release();
    };
    const onAbort = (): void => stop(new AbortError(req.what, { cause: req.signal?.reason }));
    const timer = setTimeout(() => stop(new TimeoutError(req.what, req.timeoutMs)), req.timeoutMs);
    req.signal?.addEventListener('abort', onAbort, { once: true });

    child.stdout.on('data', (chunk: Buffer) => {
      if (overflow) return;
      outBytes += chunk.length;
      if (outBytes > req.maxStdoutBytes) {
        overflow = true;
        killGroup(child);
        if (child.exitCode !== null || child.signalCode !== null) release();
        return;
      }
      out.push(chunk);
    });
    child.stderr.on('data', (chunk: Buffer) => {
      err.push(chunk);
      errBytes += chunk.length;
      if (errBytes > 2 * req.maxStderrBytes) {
        const all = Buffer.concat(err);
        err = [all.subarray(all.length - req.maxStderrBytes)];
        errBytes = req.maxStderrBytes;
      }
    });
    // A plugin may exit without reading its stdin (EPIPE): that is its business.
    child.stdin.on('error', () => undefined);
    child.stdin.end(req.stdin);

    child.on('error', (error: NodeJS.ErrnoException) => {
      // Spawn failures arrive here without 'close' when the process never started.
      if (child.pid === undefined) finish(() => reject(new SpawnError(error.code ?? 'EUNKNOWN', { cause: error })));
    });
    child.on('exit', () => {
      if (stopped !== undefined || overflow) release();
    });
    child.on('close', (exitCode, signal) => {
      finish(() => {
        if (stopped !== undefined) {
          reject(stopped);
          return;
        }
        const errAll = Buffer.concat(err);
        resolve({
          exitCode,
          signal,
          stdout: Buffer.concat(out),
          stderr: errAll.subarray(Math.max(0, errAll.length - req.maxStderrBytes)).toString('utf8'),
          overflow,
        });
      });
    });
  });
}

/**
 * Runs the plugin and waits until it has exited and closed its output. Retries a few times
 * when the executable is being written (ETXTBSY), as libcni does.
 *
 * @throws {@link TimeoutError}, {@link AbortError}, {@link SpawnError}.
 */
export async function execPlugin(req: ExecRequest): Promise<ExecOutcome> {
  for (let attempt = 0; ; attempt++) {
    if (req.signal?.aborted) throw new AbortError(req.what, { cause: req.signal.reason });
    try {
      return await runOnce(req);
    } catch (error) {
      if (!(error instanceof SpawnError && error.errno === 'ETXTBSY' && attempt < 5)) throw error;
      await sleep(100 * (attempt + 1));
    }
  }
}
