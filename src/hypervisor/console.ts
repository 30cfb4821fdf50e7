/**
 * Tails a VM's console log for a line, e.g. the init marker. The console is written by the
 * guest, so it is read as hostile: lines are bounded and only matched, never interpreted.
 *
 * @module
 */
import fs from 'node:fs';
import { AbortError, TimeoutError } from '../errors.js';

/** Options of {@link waitForConsoleLine}. */
export interface ConsoleWaitOptions {
  readonly signal?: AbortSignal | undefined;
  /** Default 60 s. */
  readonly timeoutMs?: number;
  /** Start reading at this byte offset (default 0: the whole log). */
  readonly offset?: number;
  /** Stop early (rejecting with this error) when it returns one, e.g. when the VM is gone. */
  readonly abortWhen?: () => Error | undefined;
}

/** Longest line kept; a longer one is cut (and can still match on its start). */
const MAX_LINE = 64 * 1024;

/**
 * Resolves with the first line of `file` that matches `pattern` (a RegExp, or a string the
 * line must contain). Watches the file with inotify and polls as a fallback.
 */
export function waitForConsoleLine(file: string, pattern: RegExp | string, options: ConsoleWaitOptions = {}): Promise<string> {
  const timeoutMs = options.timeoutMs ?? 60_000;
  const matches = (line: string): boolean => (typeof pattern === 'string' ? line.includes(pattern) : pattern.test(line));
  return new Promise<string>((resolve, reject) => {
    let offset = options.offset ?? 0;
    let partial = '';
    let done = false;
    let fd: number | undefined;
    let watcher: fs.FSWatcher | undefined;
    const finish = (error: Error | undefined, line?: string): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      clearInterval(poll);
      watcher?.close();
      options.signal?.removeEventListener('abort', onAbort);
      if (fd !== undefined) fs.closeSync(fd);
      if (error) reject(error);
      else resolve(line ?? '');
    };
    const check = (): void => {
      if (done) return;
      try {
        fd ??= fs.openSync(file, 'r');
        const buffer = Buffer.alloc(64 * 1024);
        for (;;) {
          const n = fs.readSync(fd, buffer, 0, buffer.length, offset);
          if (n <= 0) break;
          offset += n;
          const lines = (partial + buffer.toString('latin1', 0, n)).split('\n');
          partial = (lines.pop() ?? '').slice(-MAX_LINE);
          for (const line of lines) {
            const clean = line.replace(/\r$/u, '');
            if (matches(clean.slice(0, MAX_LINE))) {
              finish(undefined, clean.slice(0, MAX_LINE));
              return;
            }
          }
        }
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
          finish(error as Error);
          return;
        }
      }
      const stop = options.abortWhen?.();
      if (stop) finish(stop);
    };
    const onAbort = (): void => finish(new AbortError(`waiting for console line ${String(pattern)}`, { cause: options.signal?.reason }));
    const timer = setTimeout(() => finish(new TimeoutError(`waiting for console line ${String(pattern)}`, timeoutMs)), timeoutMs);
    const poll = setInterval(check, 100);
    if (options.signal?.aborted) {
      onAbort();
      return;
    }
    options.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      watcher = fs.watch(file, { persistent: false }, check);
      watcher.on('error', () => undefined);
    } catch {
      // the file does not exist yet: the poll picks it up
    }
    check();
  });
}
