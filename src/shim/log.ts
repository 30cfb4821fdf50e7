/**
 * The shim server's log: JSON lines (`{"time":...,"level":...,"msg":...}`) appended to a file
 * under its state directory. After `start` has printed the address nothing may reach the
 * shim's stdout or stderr, so the log never falls back to them; a line that cannot be written
 * is dropped. The file is capped: past `maxBytes` it is renamed to `NAME.1` (one old file kept).
 *
 * @module
 */
import fs from 'node:fs';

export interface ShimLog {
  debug(msg: string): void;
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
}

export type ShimLogLevel = 'debug' | 'info' | 'warn' | 'error';

/** A log that writes nothing (tests, and the `start`/`delete` commands without a state dir). */
export const silentLog: ShimLog = { debug() {}, info() {}, warn() {}, error() {} };

/** One log line, without its newline. */
export function shimLogLine(level: ShimLogLevel, msg: string, date = new Date()): string {
  return JSON.stringify({ time: date.toISOString(), level, msg });
}

/** A ShimLog appending to `file` (made 0600), debug lines only with `debug`. */
export function fileLog(file: string, options: { debug?: boolean; maxBytes?: number } = {}): ShimLog {
  const maxBytes = options.maxBytes ?? 4 * 1024 * 1024;
  let size: number;
  try {
    size = fs.statSync(file).size;
  } catch {
    size = 0;
  }
  const write = (level: ShimLogLevel, msg: string): void => {
    if (level === 'debug' && options.debug !== true) return;
    const line = `${shimLogLine(level, msg)}\n`;
    try {
      if (size + line.length > maxBytes && size > 0) {
        fs.renameSync(file, `${file}.1`);
        size = 0;
      }
      fs.appendFileSync(file, line, { mode: 0o600 });
      size += Buffer.byteLength(line);
    } catch {
      // dropped: the shim has no other place to report to
    }
  };
  return {
    debug: (msg) => write('debug', msg),
    info: (msg) => write('info', msg),
    warn: (msg) => write('warn', msg),
    error: (msg) => write('error', msg),
  };
}
