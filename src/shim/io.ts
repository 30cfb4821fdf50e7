/**
 * A task's stdio as containerd names it in Create and Exec: for each of stdin, stdout and stderr
 * either nothing (''), the path of a FIFO containerd made, `file:///abs/path` (output appended to a
 * file) or `binary:///abs/path?key=value&...` (a logging binary, containerd's protocol: the binary
 * reads the process's stdout on fd 3 and its stderr on fd 4, and closes fd 5 once it is ready).
 *
 * FIFOs are opened without waiting for containerd's end: an output FIFO read-write (so the open
 * never blocks, a reader may attach late, and a reader going away — containerd restarting — costs
 * no SIGPIPE), the stdin FIFO read-only and non-blocking (the kernel reports no end of file before
 * a writer has been seen). Every stream is driven by Node's event loop (no blocked thread).
 *
 * @module
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { throwFailures } from '../cleanup.js';
import { InvalidArgumentError, NotFoundError, TimeoutError, VmpodError } from '../errors.js';
import { native } from '../native.js';

/** The stdio of one task or exec, as the shim uses it. */
export interface ProcessIo {
  /** What containerd writes to the process (pipe it into the process's stdin); null: none. */
  stdin: Readable | null;
  /** Where the process's stdout goes (pipe into it); null: none. With a terminal, the terminal's output. */
  stdout: Writable | null;
  /** Where the process's stderr goes; null: none, and always null with a terminal. */
  stderr: Writable | null;
  /**
   * containerd's CloseIO: ends `stdin` towards the process, after what containerd already wrote
   * into the FIFO (still unread) has been passed on.
   */
  closeStdin(): void;
  /**
   * Ends stdout and stderr (call it once the process's output streams have ended and been piped
   * in), waits until every byte written to them reached the FIFO, file or logging binary, closes
   * everything (stdin too) and, for a logging binary, waits for it to exit (SIGTERM, then SIGKILL
   * after the stop timeout). Rejects, after closing all, when a destination failed (e.g. the
   * logging binary died: what it did not read is lost). Idempotent.
   *
   * With `force` (Delete, Shutdown): nothing more is waited for; what is still queued is dropped,
   * a logging binary is killed, and the promise resolves once everything is closed. A plain
   * close() still under way then rejects (its output was not fully delivered).
   */
  close(options?: { force?: boolean }): Promise<void>;
}

/** The URIs of CreateTaskRequest / ExecProcessRequest. */
export interface StdioUris {
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
}

/** Tuning of {@link openProcessIo} (tests shorten the waits). */
export interface ProcessIoOptions {
  /** How long a logging binary has to signal ready by closing fd 5 (default 10000 ms). */
  readyTimeoutMs?: number;
  /** How long a logging binary has to exit after its input ended, then after SIGTERM (default 5000 ms each). */
  stopTimeoutMs?: number;
}

/** A logging binary did not signal that it is ready (fd 5 closed) in time; it was killed. */
export class LoggerNotReadyError extends TimeoutError {}

/** Where one stdio stream goes, as parsed from its URI. */
export type StdioTarget =
  | { kind: 'none' }
  | { kind: 'fifo'; path: string }
  | { kind: 'file'; path: string }
  | { kind: 'binary'; path: string; args: string[] };

/** The longest URI accepted (a path plus a logging binary's arguments). */
export const MAX_URI_LENGTH = 4096;
/** The longest query of a binary:// URI, and the most parameters in it. */
export const MAX_QUERY_LENGTH = 2048;
export const MAX_QUERY_PARAMS = 32;

const SCHEME = /^([A-Za-z][A-Za-z0-9+.-]*):/u;

/** Checks an absolute host path from a URI: no `.`/`..`/empty components, no NUL. */
function checkPath(field: string, p: string): string {
  if (!p.startsWith('/')) throw new InvalidArgumentError(field, `${JSON.stringify(p)} is not an absolute path`);
  if (p.includes('\0')) throw new InvalidArgumentError(field, 'the path contains a NUL byte');
  if (p.length >= 4096) throw new InvalidArgumentError(field, 'the path is longer than 4095 bytes');
  const parts = p.split('/').slice(1);
  if (p === '/' || parts.some((c) => c === '' || c === '.' || c === '..')) {
    throw new InvalidArgumentError(field, `${JSON.stringify(p)} is not a normalised path to a file (no ".", "..", "//" or trailing "/")`);
  }
  return p;
}

/**
 * Parses one stdio URI (containerd's forms: '', a FIFO path, file:///..., binary:///...?...).
 * Throws InvalidArgumentError (field = `field`) saying what is wrong.
 */
export function parseStdioUri(field: string, uri: string): StdioTarget {
  if (uri === '') return { kind: 'none' };
  if (uri.length > MAX_URI_LENGTH) throw new InvalidArgumentError(field, `the URI is longer than ${MAX_URI_LENGTH} characters`);
  if (uri.startsWith('/')) return { kind: 'fifo', path: checkPath(field, uri) };
  const scheme = SCHEME.exec(uri)?.[1]?.toLowerCase();
  if (scheme === undefined) {
    throw new InvalidArgumentError(field, `${JSON.stringify(uri)} is neither an absolute FIFO path nor a file:// or binary:// URI`);
  }
  if (scheme !== 'file' && scheme !== 'binary') {
    throw new InvalidArgumentError(field, `unknown stdio scheme "${scheme}" (known: a FIFO path, file://, binary://)`);
  }
  const rest = uri.slice(scheme.length + 1);
  if (!rest.startsWith('///')) throw new InvalidArgumentError(field, `${scheme}: URIs name an absolute path with no host (${scheme}:///path)`);
  if (rest.includes('#')) throw new InvalidArgumentError(field, `a ${scheme}: URI has no fragment`);
  const q = rest.indexOf('?');
  const rawPath = q < 0 ? rest.slice(2) : rest.slice(2, q);
  const rawQuery = q < 0 ? '' : rest.slice(q + 1);
  let decoded: string;
  try {
    decoded = decodeURIComponent(rawPath);
  } catch (cause) {
    throw new InvalidArgumentError(field, `the path of ${JSON.stringify(uri)} has a bad %-escape`, { cause });
  }
  // Checked as written and as decoded: URL parsers fold "..", and "%2e%2e" is ".." too.
  checkPath(field, rawPath);
  const filePath = checkPath(field, decoded);
  if (scheme === 'file') {
    if (q >= 0) throw new InvalidArgumentError(field, 'a file: URI takes no query');
    return { kind: 'file', path: filePath };
  }
  if (rawQuery.length > MAX_QUERY_LENGTH) throw new InvalidArgumentError(field, `the query is longer than ${MAX_QUERY_LENGTH} characters`);
  const params = [...new URLSearchParams(rawQuery)];
  if (params.length > MAX_QUERY_PARAMS) throw new InvalidArgumentError(field, `the query has more than ${MAX_QUERY_PARAMS} parameters`);
  // containerd passes each parameter as two arguments: the key, then its value.
  const args: string[] = [];
  for (const [key, value] of params) {
    if (key.includes('\0') || value.includes('\0')) throw new InvalidArgumentError(field, 'a query parameter contains a NUL byte');
    args.push(key, value);
  }
  return { kind: 'binary', path: filePath, args };
}

/** The checked plan of a process's stdio (exported for tests). */
export interface StdioPlan {
  stdin: StdioTarget;
  stdout: StdioTarget;
  stderr: StdioTarget;
}

/** Parses and cross-checks the three URIs; nothing is opened. */
export function planStdio(uris: StdioUris): StdioPlan {
  const stdin = parseStdioUri('stdin', uris.stdin);
  const stdout = parseStdioUri('stdout', uris.stdout);
  // With a terminal there is one output stream, the terminal's (containerd sends stderr '').
  const stderr = uris.terminal ? ({ kind: 'none' } as const) : parseStdioUri('stderr', uris.stderr);
  if (stdin.kind !== 'none' && stdin.kind !== 'fifo') throw new InvalidArgumentError('stdin', `stdin is a FIFO path or '', not a ${stdin.kind}: URI`);
  if (stderr.kind === 'binary' && (stdout.kind !== 'binary' || uris.stdout !== uris.stderr)) {
    throw new InvalidArgumentError('stderr', 'a binary:// logger is named by stdout (stderr the same URI or empty)');
  }
  if (stdout.kind === 'binary' && stderr.kind !== 'none' && uris.stdout !== uris.stderr) {
    throw new InvalidArgumentError('stderr', 'with a binary:// logger on stdout, stderr is the same URI or empty');
  }
  return { stdin, stdout, stderr };
}

// --- opening ---

function openFailed(field: string, p: string, error: unknown): Error {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return new NotFoundError(`${field} FIFO`, p, { cause: error });
  if (code === 'ELOOP') return new InvalidArgumentError(field, `${p} is a symbolic link`, { cause: error });
  return new VmpodError('ERR_VMPOD_STDIO', `${field}: cannot open ${p}: ${(error as Error).message}`, { cause: error });
}

/** Opens an existing FIFO without blocking; checks that it is one. The caller owns the fd. */
async function openFifo(field: string, p: string, flags: number): Promise<number> {
  // A plain fd (not a FileHandle): it is handed to a net.Socket, which closes it.
  const fd = await new Promise<number>((resolve, reject) => {
    fs.open(p, flags | fs.constants.O_NOFOLLOW, (error, opened) => (error ? reject(openFailed(field, p, error)) : resolve(opened)));
  });
  const isFifo = await new Promise<boolean>((resolve) => {
    fs.fstat(fd, (error, st) => resolve(error === null && st.isFIFO()));
  });
  if (!isFifo) {
    fs.closeSync(fd);
    throw new InvalidArgumentError(field, `${p} is not a FIFO`);
  }
  return fd;
}

/** One output destination (a FIFO, a file, a pipe to the logger) and the first error it had. */
interface Sink {
  stream: Writable;
  error: Error | undefined;
}

function sink(stream: Writable): Sink {
  const s: Sink = { stream, error: undefined };
  stream.on('error', (error: Error) => {
    s.error ??= error;
  });
  return s;
}

async function openFile(field: string, p: string): Promise<Sink> {
  try {
    await fs.promises.mkdir(path.dirname(p), { recursive: true, mode: 0o755 });
    const handle = await fs.promises.open(p, fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600);
    return sink(handle.createWriteStream());
  } catch (error) {
    throw openFailed(field, p, error);
  }
}

function fdSocket(fd: number, direction: 'read' | 'write'): net.Socket {
  return new net.Socket({ fd, readable: direction === 'read', writable: direction === 'write' });
}

interface Logger {
  child: ChildProcess;
  stdout: Sink;
  stderr: Sink;
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.off('exit', onExit);
      resolve(false);
    }, ms);
    const onExit = (): void => {
      clearTimeout(timer);
      resolve(true);
    };
    child.once('exit', onExit);
  });
}

async function startLogger(
  target: Extract<StdioTarget, { kind: 'binary' }>,
  context: { id: string; namespace: string },
  readyTimeoutMs: number,
): Promise<Logger> {
  const addon = native();
  const fds: number[] = [];
  const closeAll = (): void => {
    for (const fd of fds.splice(0)) addon.closeFd(fd);
  };
  let child: ChildProcess;
  let outW: number, errW: number, readyR: number;
  try {
    const [outR, ow] = addon.pipe();
    fds.push(outR, ow);
    const [errR, ew] = addon.pipe();
    fds.push(errR, ew);
    const [rr, readyW] = addon.pipe();
    fds.push(rr, readyW);
    [outW, errW, readyR] = [ow, ew, rr];
    child = spawn(target.path, target.args, {
      stdio: ['ignore', 'ignore', 'ignore', outR, errR, readyW],
      env: { CONTAINER_ID: context.id, CONTAINER_NAMESPACE: context.namespace },
    });
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', reject);
    });
    // The child has its copies; ours of its ends go (the ready pipe's EOF then means the child's end closed).
    for (const fd of [outR, errR, readyW]) {
      addon.closeFd(fd);
      fds.splice(fds.indexOf(fd), 1);
    }
  } catch (error) {
    closeAll();
    throw new VmpodError('ERR_VMPOD_STDIO', `stdout: cannot start the logging binary ${target.path}: ${(error as Error).message}`, { cause: error });
  }
  child.on('error', () => {
    // a failed kill() of a process already gone; its exit is what matters
  });
  const ready = fdSocket(readyR, 'read');
  fds.splice(fds.indexOf(readyR), 1);
  const signalled = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), readyTimeoutMs);
    const done = (): void => {
      clearTimeout(timer);
      resolve(true);
    };
    ready.once('data', done);
    ready.once('end', done);
    ready.once('error', done);
  });
  ready.destroy();
  const stdout = sink(fdSocket(outW, 'write'));
  const stderr = sink(fdSocket(errW, 'write'));
  fds.length = 0;
  if (!signalled) {
    stdout.stream.destroy();
    stderr.stream.destroy();
    child.kill('SIGKILL');
    await waitExit(child, 5000);
    throw new LoggerNotReadyError(`the logging binary ${target.path} signalling ready (closing fd 5)`, readyTimeoutMs);
  }
  return { child, stdout, stderr };
}

/**
 * Opens the stdio of a task or exec. Every URI is checked before anything is opened
 * (InvalidArgumentError); a FIFO that is not there is a NotFoundError; a logging binary that does
 * not signal ready in time is a {@link LoggerNotReadyError}. On failure nothing stays open.
 */
export async function openProcessIo(
  uris: StdioUris,
  context: { id: string; namespace: string },
  options: ProcessIoOptions = {},
): Promise<ProcessIo> {
  const plan = planStdio(uris);
  const readyTimeoutMs = options.readyTimeoutMs ?? 10_000;
  const stopTimeoutMs = options.stopTimeoutMs ?? 5000;

  const sinks: Sink[] = [];
  let stdinSocket: net.Socket | undefined;
  let stdinFd = -1;
  let logger: Logger | undefined;
  let stdout: Sink | undefined;
  let stderr: Sink | undefined;

  const openOutput = async (field: 'stdout' | 'stderr', target: StdioTarget): Promise<Sink | undefined> => {
    switch (target.kind) {
      case 'none':
        return undefined;
      case 'fifo': {
        const s = sink(fdSocket(await openFifo(field, target.path, fs.constants.O_RDWR), 'write'));
        sinks.push(s);
        return s;
      }
      case 'file': {
        const s = await openFile(field, target.path);
        sinks.push(s);
        return s;
      }
      case 'binary': {
        logger ??= await startLogger(target, context, readyTimeoutMs);
        return field === 'stdout' ? logger.stdout : logger.stderr;
      }
    }
  };

  try {
    if (plan.stdin.kind === 'fifo') {
      stdinFd = await openFifo('stdin', plan.stdin.path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
      stdinSocket = fdSocket(stdinFd, 'read');
      stdinSocket.on('error', () => {
        // a read error ends stdin like EOF does (the pipe into the process ends)
      });
    }
    stdout = await openOutput('stdout', plan.stdout);
    // stdout and stderr to the same file: one stream, so their lines interleave as written.
    if (plan.stderr.kind === 'file' && plan.stdout.kind === 'file' && plan.stderr.path === plan.stdout.path) stderr = stdout;
    else stderr = await openOutput('stderr', plan.stderr);
  } catch (error) {
    stdinSocket?.destroy();
    for (const s of sinks) s.stream.destroy();
    if (logger !== undefined) {
      logger.stdout.stream.destroy();
      logger.stderr.stream.destroy();
      logger.child.kill('SIGKILL');
    }
    throw error;
  }
  if (logger !== undefined) {
    sinks.push(logger.stdout, logger.stderr);
    // The logger always has both pipes; one the process does not use is ended now.
    if (stderr === undefined) logger.stderr.stream.end();
  }

  let stdin: PassThrough | null = null;
  if (stdinSocket !== undefined) {
    stdin = new PassThrough();
    stdinSocket.pipe(stdin);
  }

  let stdinClosed = false;
  const closeStdin = (): void => {
    if (stdinClosed || stdinSocket === undefined || stdin === null) return;
    stdinClosed = true;
    const socket = stdinSocket;
    socket.unpipe(stdin);
    if (!stdin.writableEnded) {
      // What the socket has read but not passed on, then what is still in the FIFO.
      for (let chunk = socket.read() as Buffer | null; chunk !== null; chunk = socket.read() as Buffer | null) stdin.write(chunk);
      if (!socket.readableEnded && !socket.destroyed) {
        const buf = Buffer.allocUnsafe(65536);
        for (;;) {
          let n: number;
          try {
            n = fs.readSync(stdinFd, buf, 0, buf.length, null);
          } catch {
            break; // EAGAIN: nothing more is there now
          }
          if (n === 0) break;
          stdin.write(Buffer.from(buf.subarray(0, n)));
        }
      }
      stdin.end();
    }
    socket.destroy();
  };

  let closing: Promise<void> | undefined;
  const close = (closeOptions: { force?: boolean } = {}): Promise<void> => {
    if (closeOptions.force === true) {
      stdinClosed = true;
      stdinSocket?.destroy();
      stdin?.end();
      for (const s of sinks) s.stream.destroy();
      logger?.child.kill('SIGKILL');
    }
    closing ??= (async () => {
      const failures: unknown[] = [];
      if (stdinSocket !== undefined && !stdinClosed) {
        stdinClosed = true;
        stdinSocket.destroy();
        stdin?.end();
      }
      await Promise.all(
        sinks.map(async (s) => {
          if (!s.stream.writableEnded && !s.stream.destroyed) s.stream.end();
          try {
            await finished(s.stream, { readable: false });
            // finished() also resolves for a stream destroyed after end() (destroy empties its
            // buffer): only 'finish' means every byte was written.
            if (!s.stream.writableFinished) s.error ??= new Error('closed before everything queued was written');
          } catch (error) {
            s.error ??= error as Error;
          }
          s.stream.destroy();
          if (s.error !== undefined) failures.push(s.error);
        }),
      );
      if (logger !== undefined) {
        const child = logger.child;
        if (!(await waitExit(child, stopTimeoutMs))) {
          child.kill('SIGTERM');
          if (!(await waitExit(child, stopTimeoutMs))) {
            child.kill('SIGKILL');
            await waitExit(child, stopTimeoutMs);
          }
        }
      }
      throwFailures(
        failures.map((e) => new VmpodError('ERR_VMPOD_STDIO', `output of ${context.id} not fully delivered: ${(e as Error).message}`, { cause: e })),
        `output of ${context.id} not fully delivered`,
      );
    })();
    return closeOptions.force === true ? closing.catch(() => undefined) : closing;
  };

  return {
    stdin,
    stdout: stdout?.stream ?? null,
    stderr: stderr?.stream ?? null,
    closeStdin,
    close,
  };
}
