/**
 * The CRI log format, as containerd's CRI plugin writes container logs and the kubelet reads
 * them: one record per line of output,
 *
 * ```
 * 2026-12-07T21:04:05.123456789Z stdout F hello world
 * 2026-12-07T21:04:05.123501234Z stderr P a line that is not finished yet
 * ```
 *
 * the time the host received the bytes (RFC 3339 in UTC, nanoseconds), the stream, a tag (`F`:
 * the record ends a line; `P`: a partial line, continued by the next record of the same stream)
 * and the bytes of the line without its newline. The content is the container's bytes, as they
 * are (binary, invalid UTF-8, escape sequences): only `\n` delimits records, so a record always
 * parses back to exactly what the container wrote.
 *
 * A line longer than {@link MAX_RECORD_CONTENT} becomes several `P` records; bytes that arrive
 * without a newline are written at once as a `P` record (nothing is held back waiting for the end
 * of a line). Pure functions: no I/O.
 *
 * @module
 */

/** The two output streams of a container. */
export type LogStream = 'stdout' | 'stderr';

/** Most content bytes in one record (containerd's default maximum line size): longer lines are split. */
export const MAX_RECORD_CONTENT = 16 * 1024;

/** One record of a container log. */
export interface LogRecord {
  /** When the host received the bytes, RFC 3339 with nanoseconds, as written. */
  time: string;
  /** The same time in nanoseconds since the epoch (for comparisons). */
  timeNs: bigint;
  stream: LogStream;
  /** True for a `P` record: the line goes on in the next record of the stream. */
  partial: boolean;
  /** The bytes of the line (without the newline). */
  content: Buffer;
}

const NEWLINE = 0x0a;
const NS_PER_MS = 1_000_000n;
// The wall clock at start-up, carried forward by the monotonic clock: nanoseconds that never go back.
const ORIGIN = BigInt(Date.now()) * NS_PER_MS - process.hrtime.bigint();
let last = 0n;

/** Now, in nanoseconds since the epoch; strictly increasing in this process. */
export function nowNs(): bigint {
  let now = ORIGIN + process.hrtime.bigint();
  if (now <= last) now = last + 1n;
  last = now;
  return now;
}

/** RFC 3339 in UTC with nine fraction digits, e.g. `2026-12-07T21:04:05.123456789Z`. */
export function formatTime(ns: bigint): string {
  const ms = ns / NS_PER_MS;
  const iso = new Date(Number(ms)).toISOString(); // YYYY-MM-DDTHH:MM:SS.mmmZ
  const fraction = (ns % 1_000_000_000n).toString().padStart(9, '0');
  return `${iso.slice(0, 19)}.${fraction}Z`;
}

const TIME = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$/u;

/** Parses an RFC 3339 time (as in CRI logs) to nanoseconds since the epoch; undefined if it is not one. */
export function parseTime(text: string): bigint | undefined {
  const m = TIME.exec(text);
  if (!m) return undefined;
  const seconds = Date.parse(`${m[1]}${m[3]}`);
  if (!Number.isFinite(seconds)) return undefined;
  return BigInt(seconds) * NS_PER_MS + BigInt((m[2] ?? '').padEnd(9, '0'));
}

/**
 * The records (as buffers to write, in order) for `chunk` of `stream` received at `ns`: one `F`
 * record per complete line, a `P` record for bytes after the last newline, lines longer than
 * {@link MAX_RECORD_CONTENT} split into `P` records. The buffers are the headers, views of `chunk`
 * and newlines: nothing of the content is copied.
 */
export function encodeChunk(stream: LogStream, chunk: Buffer, ns: bigint = nowNs()): Buffer[] {
  const out: Buffer[] = [];
  if (chunk.length === 0) return out;
  const time = formatTime(ns);
  const full = Buffer.from(`${time} ${stream} F `, 'latin1');
  const partial = Buffer.from(`${time} ${stream} P `, 'latin1');
  const newline = Buffer.from('\n');
  let at = 0;
  while (at < chunk.length) {
    const end = chunk.indexOf(NEWLINE, at);
    const lineEnd = end < 0 ? chunk.length : end;
    // Pieces of at most MAX_RECORD_CONTENT; the last one is F when a newline ends it.
    while (lineEnd - at > MAX_RECORD_CONTENT) {
      out.push(partial, chunk.subarray(at, at + MAX_RECORD_CONTENT), newline);
      at += MAX_RECORD_CONTENT;
    }
    if (end < 0) {
      if (lineEnd > at) out.push(partial, chunk.subarray(at, lineEnd), newline);
      break;
    }
    out.push(full, chunk.subarray(at, lineEnd), newline);
    at = end + 1;
  }
  return out;
}

/** Header fields end at the third space; the longest header is a time of 35 characters, a stream and a tag. */
const MAX_HEADER = 64;
const HEADER = /^(\S+) (stdout|stderr) ([PF]) $/u;

/**
 * Parses one record (a line of a log file, without its newline). Undefined for anything else: a
 * line cut short by a crash, or bytes that are not a record.
 */
export function parseRecord(line: Buffer): LogRecord | undefined {
  let spaces = 0;
  let at = 0;
  for (; at < line.length && at < MAX_HEADER; at++) {
    if (line[at] === 0x20 && ++spaces === 3) break;
  }
  if (spaces !== 3) return undefined;
  const m = HEADER.exec(line.toString('latin1', 0, at + 1));
  if (!m) return undefined;
  const timeNs = parseTime(m[1]!);
  if (timeNs === undefined) return undefined;
  return { time: m[1]!, timeNs, stream: m[2] as LogStream, partial: m[3] === 'P', content: line.subarray(at + 1) };
}

/**
 * Splits log file bytes into records. Returns the records of every complete line and how many
 * bytes they took: what is after the last newline (a record being written) is left for later.
 * Lines that do not parse are skipped and counted.
 */
export function parseRecords(bytes: Buffer): { records: LogRecord[]; used: number; skipped: number } {
  const records: LogRecord[] = [];
  let skipped = 0;
  let at = 0;
  for (;;) {
    const end = bytes.indexOf(NEWLINE, at);
    if (end < 0) break;
    const record = parseRecord(bytes.subarray(at, end));
    if (record) records.push(record);
    else skipped++;
    at = end + 1;
  }
  return { records, used: at, skipped };
}
