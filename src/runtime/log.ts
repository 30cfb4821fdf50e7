/**
 * Errors and the `--log` file, as runc writes them: callers (conmon, containerd's shim) pass
 * `--log FILE --log-format json` and turn the last line's `msg` into the error the user sees.
 *
 * - with `--log`: the line (`{"level":"error","msg":"...","time":"..."}` or logrus's text form
 *   `time="..." level=error msg="..."`) is appended to the file, and the bare message goes to
 *   stderr;
 * - without: the line goes to stderr.
 *
 * @module
 */
import fs from 'node:fs';
import { VmpodError } from '../errors.js';

/** A runtime command failed; its message is what the caller shows (e.g. `container does not exist`). */
export class RuntimeError extends VmpodError {
  constructor(message: string, options: { cause?: unknown } = {}) {
    super('ERR_VMPOD_RUNTIME', message, options);
  }
}

/** Where log lines go (the global options `--log`, `--log-format`, `--debug`). */
export interface LogTarget {
  file?: string;
  format: 'json' | 'text';
  debug: boolean;
}

/** RFC 3339 in UTC to the second, as logrus prints it by default. */
export function logTime(date = new Date()): string {
  return `${date.toISOString().slice(0, 19)}Z`;
}

// logrus quotes a text value unless it is made of these characters only.
const BARE = /^[A-Za-z0-9\-._/@^+]+$/u;

/** One log line (without its newline) in `format`; logrus's JSON puts the keys in this order. */
export function logLine(level: 'error' | 'warning' | 'info' | 'debug', msg: string, format: 'json' | 'text', date = new Date()): string {
  const time = logTime(date);
  if (format === 'json') return JSON.stringify({ level, msg, time });
  const quote = (v: string): string => (BARE.test(v) ? v : JSON.stringify(v));
  return `time=${quote(time)} level=${level} msg=${quote(msg)}`;
}

/** Appends a line to the log (file or stderr). Never throws: a log that cannot be written must not hide the error. */
export function writeLog(target: LogTarget, level: 'error' | 'warning' | 'info' | 'debug', msg: string): void {
  if (level === 'debug' && !target.debug) return;
  const line = `${logLine(level, msg, target.format)}\n`;
  try {
    if (target.file !== undefined) fs.appendFileSync(target.file, line, { mode: 0o600 });
    else process.stderr.write(line);
  } catch {
    try {
      process.stderr.write(line);
    } catch {
      // nothing left to tell
    }
  }
}

/** The message of a failure, one line: the error's own, then its causes'. */
export function errorMessage(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  if (error instanceof RuntimeError) return error.message;
  let message = error.message;
  let cause = error.cause;
  for (let depth = 0; cause instanceof Error && depth < 3; depth++) {
    if (!message.includes(cause.message)) message += `: ${cause.message}`;
    cause = cause.cause;
  }
  return message.replace(/\s*\n\s*/gu, '; ');
}

/** Reports a failed command: the log line, and with `--log` the bare message on stderr too (runc's `fatal`). */
export function reportFailure(target: LogTarget, message: string): void {
  writeLog(target, 'error', message);
  if (target.file !== undefined) {
    try {
      process.stderr.write(`${message}\n`);
    } catch {
      // stderr gone
    }
  }
}
