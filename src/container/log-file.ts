/**
 * Container logs on disk: where they are, the writer that appends CRI records (src/container/
 * log-format.ts) with rotation, and the reader behind `container.logs()`.
 *
 * A container's log is a folder of its own in its sandbox's folder, `logs/ID/`: `stdio.log` is
 * written, and when a record would take it past `maxBytes` it becomes `stdio.log.1` (which becomes
 * `stdio.log.2`, and so on up to `maxFiles - 1`; the oldest is dropped), so a log never takes more
 * than `maxBytes * maxFiles` bytes, whatever the container prints. One process writes a log at a
 * time: it holds an exclusive flock(2) on `writer.lock` for as long as it writes (the kernel drops
 * it when the writer dies). A reader that follows the log stops once nobody holds that lock and it
 * has read everything: the container's output has ended (or its writer died).
 *
 * Two writers exist: this module's {@link ContainerLogWriter}, used by a process that reads the
 * container's output itself (the streams it gets are copied into the log as they arrive), and
 * the native `vmpod-logger --cri` (native/logger), a detached process that owns the output of a
 * container whose creator does not stay (`stdio: { detached: true }`, `vmpod run -d`). Both write
 * the same files the same way.
 *
 * @module
 */
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { AbortError, InvalidArgumentError } from '../errors.js';
import { native } from '../native.js';
import { FileLock } from '../state/lock.js';
import * as validate from '../validate.js';
import { MAX_RECORD_CONTENT, encodeChunk, formatTime, nowNs, parseRecords, type LogRecord, type LogStream } from './log-format.js';

const NEWLINE_BYTE = 0x0a;
/** Up to this many records a chunk is written from views of it, beyond it copied. */
const FEW_RECORDS = 16;

export type { LogRecord, LogStream } from './log-format.js';

/** Bytes of one log file before it is rotated, by default (4 MiB: the state directory is often a tmpfs, in RAM). */
export const DEFAULT_LOG_MAX_BYTES = 4 * 1024 * 1024;
/** Files of one log (the one written and the rotated ones), by default. */
export const DEFAULT_LOG_MAX_FILES = 3;
/** The smallest `maxBytes`: a record (at most 16 KiB of content and its header) always fits. */
export const MIN_LOG_MAX_BYTES = 64 * 1024;
/** The most files a log may have. */
export const MAX_LOG_FILES = 16;

/** How a container's log is kept: `maxBytes * maxFiles` bounds its disk use. */
export interface ContainerLogConfig {
  /** Bytes of a log file before it is rotated (default 4 MiB; at least 64 KiB). */
  maxBytes?: number;
  /** Files kept, the one written included (default 3; 1 to 16). */
  maxFiles?: number;
}

/** A checked {@link ContainerLogConfig}. */
export type ResolvedLogConfig = Required<ContainerLogConfig>;

/** Checks a log config and fills in the defaults. */
export function resolveLogConfig(config: ContainerLogConfig | undefined, field = 'log'): ResolvedLogConfig {
  if (config !== undefined && (typeof config !== 'object' || config === null)) throw new InvalidArgumentError(field, 'must be an object or false');
  return {
    maxBytes: validate.integer(config?.maxBytes ?? DEFAULT_LOG_MAX_BYTES, `${field}.maxBytes`, MIN_LOG_MAX_BYTES, 2 ** 40),
    maxFiles: validate.integer(config?.maxFiles ?? DEFAULT_LOG_MAX_FILES, `${field}.maxFiles`, 1, MAX_LOG_FILES),
  };
}

/** The files of a container's log. */
export interface LogPaths {
  /** The log's folder, `SANDBOX_DIR/logs/ID`. */
  dir: string;
  /** The file being written; rotated ones are `file.1`, `file.2`, ... */
  file: string;
  /** Held (flock) by the process writing the log. */
  lock: string;
}

/** The log files of container `id` of the sandbox in `sandboxDir`. */
export function logPaths(sandboxDir: string, id: string): LogPaths {
  const dir = path.join(sandboxDir, 'logs', validate.id(id, 'container id'));
  return { dir, file: path.join(dir, 'stdio.log'), lock: path.join(dir, 'writer.lock') };
}

/** The ids of the containers of the sandbox in `sandboxDir` that have a log. */
export function loggedContainers(sandboxDir: string): string[] {
  try {
    return fs
      .readdirSync(path.join(sandboxDir, 'logs'), { withFileTypes: true })
      .filter((e) => e.isDirectory() && fs.existsSync(path.join(sandboxDir, 'logs', e.name, 'stdio.log')))
      .map((e) => e.name)
      .sort();
  } catch {
    return [];
  }
}

/** Removes the log of container `id` (its folder). */
export function removeLog(sandboxDir: string, id: string): void {
  fs.rmSync(logPaths(sandboxDir, id).dir, { recursive: true, force: true });
}

/** Makes the log's folder (0700, like the sandbox's). */
export function makeLogDir(paths: LogPaths): void {
  fs.mkdirSync(path.dirname(paths.dir), { recursive: true, mode: 0o700 });
  fs.mkdirSync(paths.dir, { recursive: true, mode: 0o700 });
}

/**
 * Appends CRI records to a container's log, rotating it (see the module's description). Writes
 * are synchronous (a log file is in the page cache, or on a tmpfs): the bytes are in the file
 * when {@link write} returns, and memory never holds more than the chunk in hand. A write that
 * fails (the disk is full) turns the writer off (`failed`) rather than failing the stream it copies.
 */
export class ContainerLogWriter {
  #fd: number;
  #size: number;
  #lock: FileLock | undefined;
  #failed: Error | undefined;
  readonly #open = new Set<LogStream>();

  private constructor(
    readonly paths: LogPaths,
    readonly config: ResolvedLogConfig,
    lock: FileLock,
  ) {
    this.#lock = lock;
    this.#fd = fs.openSync(paths.file, fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600);
    this.#size = fs.fstatSync(this.#fd).size;
  }

  /** Opens (creating) the log of container `id`, as its one writer: waits up to `timeoutMs` for a previous writer to let go. */
  static async open(sandboxDir: string, id: string, config: ResolvedLogConfig, timeoutMs = 5_000): Promise<ContainerLogWriter> {
    const paths = logPaths(sandboxDir, id);
    makeLogDir(paths);
    const lock = await FileLock.acquire(paths.lock, { timeoutMs });
    try {
      return new ContainerLogWriter(paths, config, lock);
    } catch (error) {
      await lock.release();
      throw error;
    }
  }

  /** Why the writer stopped writing, if it did. */
  get failed(): Error | undefined {
    return this.#failed;
  }

  /**
   * Appends the records of `chunk` of `stream` (received now), as {@link encodeChunk} makes them:
   * a chunk of few records (long lines, output without newlines) is written from views of it
   * (no copy); one of many short lines is copied into one buffer and written with one write per
   * file (a buffer object per line would cost more than the copy).
   */
  write(stream: LogStream, chunk: Buffer): void {
    if (this.#failed || this.#fd < 0 || chunk.length === 0) return;
    try {
      const time = formatTime(nowNs());
      const full = Buffer.from(`${time} ${stream} F `, 'latin1');
      const partial = Buffer.from(`${time} ${stream} P `, 'latin1');
      let records = Math.ceil(chunk.length / MAX_RECORD_CONTENT) + 1;
      for (let at = chunk.indexOf(NEWLINE_BYTE); at >= 0 && records <= FEW_RECORDS; at = chunk.indexOf(NEWLINE_BYTE, at + 1)) records++;
      if (records <= FEW_RECORDS) return this.#writeViews(encodeChunk(stream, chunk));
      for (let at = chunk.indexOf(NEWLINE_BYTE); at >= 0; at = chunk.indexOf(NEWLINE_BYTE, at + 1)) records++;
      const out = Buffer.allocUnsafe(chunk.length + records * (full.length + 1));
      let used = 0;
      const record = (header: Buffer, from: number, to: number): void => {
        const length = header.length + (to - from) + 1;
        if (this.#size + used + length > this.config.maxBytes) {
          this.#writeOut(out.subarray(0, used));
          used = 0;
          if (this.#size > 0) this.#rotate();
        }
        header.copy(out, used);
        chunk.copy(out, used + header.length, from, to);
        out[used + length - 1] = NEWLINE_BYTE;
        used += length;
      };
      let at = 0;
      while (at < chunk.length) {
        const end = chunk.indexOf(NEWLINE_BYTE, at);
        const lineEnd = end < 0 ? chunk.length : end;
        for (; lineEnd - at > MAX_RECORD_CONTENT; at += MAX_RECORD_CONTENT) record(partial, at, at + MAX_RECORD_CONTENT);
        if (end < 0) {
          if (lineEnd > at) record(partial, at, lineEnd);
          break;
        }
        record(full, at, lineEnd);
        at = end + 1;
      }
      this.#writeOut(out.subarray(0, used));
    } catch (error) {
      this.#failed = error as Error;
    }
  }

  /** Writes records given as views (header, content, newline): for a chunk of few, long records, without copying them. */
  #writeViews(parts: Buffer[]): void {
    let batch: Buffer[] = [];
    let bytes = 0;
    for (let i = 0; i < parts.length; i += 3) {
      const length = parts[i]!.length + parts[i + 1]!.length + 1;
      if (this.#size + bytes + length > this.config.maxBytes) {
        this.#writev(batch);
        batch = [];
        bytes = 0;
        if (this.#size > 0) this.#rotate();
      }
      batch.push(parts[i]!, parts[i + 1]!, parts[i + 2]!);
      bytes += length;
    }
    this.#writev(batch);
  }

  #writev(buffers: Buffer[]): void {
    let rest = buffers;
    while (rest.length > 0) {
      let n = fs.writevSync(this.#fd, rest);
      this.#size += n;
      // A short write (rare on a file): go on after what was written.
      const left: Buffer[] = [];
      for (const b of rest) {
        if (n >= b.length) n -= b.length;
        else {
          left.push(n > 0 ? b.subarray(n) : b);
          n = 0;
        }
      }
      rest = left;
    }
  }

  #writeOut(data: Buffer): void {
    for (let done = 0; done < data.length; ) {
      const n = fs.writeSync(this.#fd, data, done, data.length - done);
      done += n;
      this.#size += n;
    }
  }

  /** stdio.log.(k) -> .(k+1) for the older ones, the oldest dropped, stdio.log -> .1, a new stdio.log. */
  #rotate(): void {
    const { file } = this.paths;
    const keep = this.config.maxFiles;
    fs.closeSync(this.#fd);
    this.#fd = -1;
    if (keep === 1) {
      fs.rmSync(file, { force: true });
    } else {
      for (let k = keep - 2; k >= 1; k--) {
        try {
          fs.renameSync(`${file}.${k}`, `${file}.${k + 1}`);
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
        }
      }
      fs.renameSync(file, `${file}.1`);
    }
    this.#fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600);
    this.#size = 0;
  }

  /**
   * Copies what `stream` (the container's `name` output) delivers into the log as it arrives,
   * without consuming it: the bytes still go to whoever reads `stream`. The writer closes once
   * every stream given to it has delivered its end (read or not) or was destroyed.
   */
  tee(name: LogStream, stream: Readable): void {
    this.#open.add(name);
    const push = stream.push.bind(stream);
    stream.push = (chunk: unknown, encoding?: BufferEncoding): boolean => {
      if (Buffer.isBuffer(chunk)) this.write(name, chunk);
      // The end of the source: everything is in the log, whether or not the consumer has read it.
      else if (chunk === null) this.#ended(name);
      return push(chunk, encoding);
    };
    stream.once('close', () => this.#ended(name));
  }

  #ended(name: LogStream): void {
    if (!this.#open.delete(name)) return;
    if (this.#open.size === 0) void this.close();
  }

  /** Closes the file and lets go of the writer's lock. Idempotent. */
  async close(): Promise<void> {
    if (this.#fd >= 0) fs.closeSync(this.#fd);
    this.#fd = -1;
    const lock = this.#lock;
    this.#lock = undefined;
    await lock?.release();
  }
}

/** Options of `container.logs()`. */
export interface LogOptions {
  /** Keep reading what the container writes until its output ends (`docker logs -f`). Default false. */
  follow?: boolean;
  /** Only lines received at or after this time. */
  since?: Date;
  /** Only the last `tail` lines (of what is there when the call starts); default all. */
  tail?: number;
  /** Start each line with the time it was received, RFC 3339 with nanoseconds, and a space (`docker logs -t`). */
  timestamps?: boolean;
  /** Which outputs: default both, in the order their lines were received. */
  streams?: readonly LogStream[];
  /** Ends the reading: the stream is destroyed with an `AbortError` (`ERR_VMPOD_ABORTED`). */
  signal?: AbortSignal;
}

/** One line of a container's output, as {@link ContainerLogReader} delivers it in object mode. */
export interface LogLine {
  /** When the host received its first bytes, RFC 3339 with nanoseconds. */
  time: string;
  stream: LogStream;
  /** Its bytes, with the newline (none on a last line the container did not finish). */
  data: Buffer;
}

/** How often a follower looks for new records. */
const FOLLOW_POLL_MS = 200;

/**
 * The records of a log, as lines. `P` records are joined with the records that continue them (of
 * the same stream); a line is delivered once its `F` record is read, or, at the end, unfinished.
 */
class LineJoiner {
  readonly #open: Partial<Record<LogStream, { time: string; timeNs: bigint; parts: Buffer[] }>> = {};

  /** Feeds a record; returns the line it completes. */
  push(record: LogRecord): (LogLine & { timeNs: bigint }) | undefined {
    const open = (this.#open[record.stream] ??= { time: record.time, timeNs: record.timeNs, parts: [] });
    open.parts.push(record.content);
    if (record.partial) return undefined;
    delete this.#open[record.stream];
    open.parts.push(NEWLINE);
    return { time: open.time, timeNs: open.timeNs, stream: record.stream, data: Buffer.concat(open.parts) };
  }

  /** The unfinished lines (at the end of a log that is not followed any more). */
  flush(): (LogLine & { timeNs: bigint })[] {
    const out = Object.entries(this.#open).map(([stream, open]) => ({ time: open.time, timeNs: open.timeNs, stream: stream as LogStream, data: Buffer.concat(open.parts) }));
    for (const key of Object.keys(this.#open)) delete this.#open[key as LogStream];
    return out.sort((a, b) => (a.timeNs < b.timeNs ? -1 : 1));
  }
}

const NEWLINE = Buffer.from('\n');

/** Reads a whole file from an fd (from `offset`). */
function readFrom(fd: number, offset: number): Buffer {
  const chunks: Buffer[] = [];
  for (;;) {
    const buffer = Buffer.allocUnsafe(256 * 1024);
    const n = fs.readSync(fd, buffer, 0, buffer.length, offset);
    if (n === 0) break;
    chunks.push(buffer.subarray(0, n));
    offset += n;
  }
  return Buffer.concat(chunks);
}

function openIfExists(file: string): number | undefined {
  try {
    return fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}

/** True while a process holds the log's writer lock. */
export function writerActive(paths: LogPaths): boolean {
  const fd = openIfExists(paths.lock);
  if (fd === undefined) return false;
  try {
    return !native().tryLock(fd, false); // closing the fd drops the shared lock if it was taken
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * A container's log as a Readable of its lines: bytes by default (each line's bytes, with a
 * timestamp in front when asked for), or {@link LogLine} objects with `objectMode: true`. It
 * reads the rotated files oldest first, then the current one; following, it polls the current
 * file, goes on in the new one after a rotation, and ends once no writer holds the log and
 * everything was read. Lines that do not parse (a record cut short by a crash) are skipped.
 */
export class ContainerLogReader extends Readable {
  readonly #paths: LogPaths;
  readonly #options: LogOptions;
  readonly #objects: boolean;
  readonly #joiner = new LineJoiner();
  readonly #since: bigint | undefined;
  readonly #streams: ReadonlySet<LogStream>;
  #started = false;
  #running = false;
  #fd = -1;
  #ino = -1;
  #offset = 0;
  #pending: Buffer = Buffer.alloc(0);
  #done = false;

  /** @internal */
  constructor(paths: LogPaths, options: LogOptions = {}, objectMode = false) {
    super({ objectMode, highWaterMark: objectMode ? 64 : 256 * 1024 });
    this.#paths = paths;
    this.#options = options;
    this.#objects = objectMode;
    if (options.tail !== undefined) validate.integer(options.tail, 'tail', 0, Number.MAX_SAFE_INTEGER);
    if (options.since !== undefined && !(options.since instanceof Date && Number.isFinite(options.since.getTime()))) throw new InvalidArgumentError('since', 'must be a valid Date');
    this.#since = options.since === undefined ? undefined : BigInt(options.since.getTime()) * 1_000_000n;
    const streams = options.streams ?? ['stdout', 'stderr'];
    for (const s of streams) if (s !== 'stdout' && s !== 'stderr') throw new InvalidArgumentError('streams', `${JSON.stringify(s)} is not stdout or stderr`);
    this.#streams = new Set(streams);
    if (options.signal) {
      const onAbort = (): void => void this.destroy(new AbortError(`reading the log of ${paths.dir}`, { cause: options.signal?.reason }));
      if (options.signal.aborted) queueMicrotask(onAbort);
      else {
        options.signal.addEventListener('abort', onAbort, { once: true });
        this.once('close', () => options.signal?.removeEventListener('abort', onAbort));
      }
    }
  }

  override _read(): void {
    if (this.#running || this.#done) return;
    this.#running = true;
    void this.#pump().then(
      () => (this.#running = false),
      (error: unknown) => this.destroy(error as Error),
    );
  }

  /** Delivers a line; false when the consumer has enough for now. */
  #deliver(line: LogLine & { timeNs: bigint }): boolean {
    if (!this.#streams.has(line.stream)) return true;
    if (this.#since !== undefined && line.timeNs < this.#since) return true;
    if (this.#objects) return this.push({ time: line.time, stream: line.stream, data: line.data } satisfies LogLine);
    return this.push(this.#options.timestamps ? Buffer.concat([Buffer.from(`${line.time} `), line.data]) : line.data);
  }

  async #pump(): Promise<void> {
    if (!this.#started) {
      this.#started = true;
      this.#initial();
    }
    for (;;) {
      if (this.destroyed) return;
      const more = this.#readCurrent();
      if (!more.ok) return; // the consumer has enough: _read() comes again
      if (more.got) continue;
      if (!this.#options.follow || !writerActive(this.#paths)) {
        // One last look: the writer may have written its last records before it let go.
        const last = this.#readCurrent();
        if (!last.ok) return;
        if (last.got) continue;
        for (const line of this.#joiner.flush()) this.#deliver(line);
        this.#finish();
        return;
      }
      await sleep(FOLLOW_POLL_MS);
    }
  }

  /** Pushes what the files hold now (rotated ones first), with `tail` applied (bounded: the log's files are). */
  #initial(): void {
    const { file } = this.#paths;
    // Open the current file first: a rotation meanwhile shows as the same inode among the older ones.
    const current = openIfExists(file);
    const older: number[] = [];
    const seen = new Set<number>();
    if (current !== undefined) seen.add(fs.fstatSync(current).ino);
    for (let k = 1; k < MAX_LOG_FILES; k++) {
      const fd = openIfExists(`${file}.${k}`);
      if (fd === undefined) break;
      const ino = fs.fstatSync(fd).ino;
      if (seen.has(ino)) {
        fs.closeSync(fd);
        continue;
      }
      seen.add(ino);
      older.unshift(fd);
    }
    const lines: (LogLine & { timeNs: bigint })[] = [];
    for (const fd of older) {
      try {
        const bytes = readFrom(fd, 0);
        for (const record of parseRecords(bytes).records) {
          const line = this.#joiner.push(record);
          if (line) lines.push(line);
        }
      } finally {
        fs.closeSync(fd);
      }
    }
    if (current !== undefined) {
      this.#fd = current;
      this.#ino = fs.fstatSync(current).ino;
      const bytes = readFrom(current, 0);
      const parsed = parseRecords(bytes);
      this.#offset = parsed.used;
      for (const record of parsed.records) {
        const line = this.#joiner.push(record);
        if (line) lines.push(line);
      }
    }
    // Not following, an unfinished last line is a line too (following, it waits for its end).
    if (!this.#options.follow) lines.push(...this.#joiner.flush());
    const wanted = lines.filter((l) => this.#streams.has(l.stream) && (this.#since === undefined || l.timeNs >= this.#since));
    const tail = this.#options.tail;
    const shown = tail === undefined ? wanted : tail === 0 ? [] : wanted.slice(-tail);
    for (const line of shown) this.#deliver(line);
  }

  /** Reads what was appended to the current file (and follows a rotation). */
  #readCurrent(): { ok: boolean; got: boolean } {
    if (this.#fd < 0) {
      const fd = openIfExists(this.#paths.file);
      if (fd === undefined) return { ok: true, got: false };
      this.#fd = fd;
      this.#ino = fs.fstatSync(fd).ino;
      this.#offset = 0;
    }
    let got = false;
    let ok = true;
    // The path's inode before reading: a rotation seen here happened before the read, so the old
    // file is read to its very end (its writer writes only to the new one after renaming it).
    let ino: number | undefined;
    try {
      ino = fs.statSync(this.#paths.file).ino;
    } catch {
      ino = undefined;
    }
    const bytes = readFrom(this.#fd, this.#offset);
    if (bytes.length > 0) {
      const all = this.#pending.length > 0 ? Buffer.concat([this.#pending, bytes]) : bytes;
      const parsed = parseRecords(all);
      this.#offset += bytes.length;
      this.#pending = Buffer.from(all.subarray(parsed.used));
      for (const record of parsed.records) {
        const line = this.#joiner.push(record);
        if (line) ok = this.#deliver(line) && ok;
        got = true;
      }
      if (parsed.records.length === 0 && parsed.used > 0) got = true;
    }
    // Rotated: the old file was read to its end above. The log may have rotated more than once
    // since: the rotated files newer than the old one come first, then the new current one.
    if (ino !== undefined && ino !== this.#ino) {
      fs.closeSync(this.#fd);
      this.#fd = -1;
      this.#pending = Buffer.alloc(0);
      got = true;
      for (const fd of this.#rotatedSince(this.#ino)) {
        try {
          for (const record of parseRecords(readFrom(fd, 0)).records) {
            const line = this.#joiner.push(record);
            if (line) ok = this.#deliver(line) && ok;
          }
        } finally {
          fs.closeSync(fd);
        }
      }
    }
    return { ok, got };
  }

  /** The rotated files newer than the one of inode `ino` (all of them when it was dropped), oldest first, open. */
  #rotatedSince(ino: number): number[] {
    const newer: number[] = [];
    for (let k = 1; k < MAX_LOG_FILES; k++) {
      const fd = openIfExists(`${this.#paths.file}.${k}`);
      if (fd === undefined) break;
      if (fs.fstatSync(fd).ino === ino) {
        fs.closeSync(fd);
        break;
      }
      newer.unshift(fd);
    }
    return newer;
  }

  #finish(): void {
    if (this.#done) return;
    this.#done = true;
    this.push(null);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (this.#fd >= 0) fs.closeSync(this.#fd);
    this.#fd = -1;
    callback(error);
  }
}

/** The time format of log lines with timestamps (for tests and tools). */
export { formatTime };

/** Waits until the log of `paths` has a writer (a detached writer takes its lock once it is up). */
export async function waitForWriter(paths: LogPaths, timeoutMs: number): Promise<boolean> {
  for (const deadline = Date.now() + timeoutMs; Date.now() < deadline; await sleep(20)) if (writerActive(paths)) return true;
  return writerActive(paths);
}
