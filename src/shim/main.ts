#!/usr/bin/env -S node --no-warnings
/**
 * `containerd-shim-vmpod-v2`: containerd's runtime v2 shim for vmpod (runtime name
 * `io.containerd.vmpod.v2`). containerd runs it in the task's bundle directory as
 *
 *     containerd-shim-vmpod-v2 -namespace NS -address ADDR -publish-binary BIN -id ID [-debug] start
 *     containerd-shim-vmpod-v2 -namespace NS -address ADDR -publish-binary BIN -id ID -bundle DIR delete
 *
 * with flags parsed as Go's `flag` package does (`-name value`, `-name=value`, `--name`, bools
 * without a value), the action the first argument after them.
 *
 * - `start` prints the address of the one server of this containerd and namespace,
 *   `unix:///run/containerd/s/HASH`, spawning that server (detached, its own session) if no live
 *   one answers there; under a lock, so two concurrent starts make one server; writes the
 *   address to the bundle's `address` file too. Nothing else reaches stdout or stderr (Node's
 *   warnings are off: `--no-warnings` in the interpreter line and for the server).
 * - `delete` runs when the server is gone (crashed, killed): cleans up the task's container and
 *   VM (and its rootfs mount), prints a protobuf DeleteResponse (exit status 137) to stdout.
 * - `serve` (internal) is the server process.
 *
 * @module
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { FileLock } from '../state/lock.js';
import { writeFileAtomic } from '../state/atomic.js';
import { Pods } from './pods.js';
import { unmountRootfs } from './rootfs.js';
import { encodeMessage } from './proto/index.js';
import type { ShimLog } from './log.js';
import { MANAGER_SERVICE, ShimServer } from './server.js';
import { TaskService } from './task-service.js';
import { TtrpcClient } from './ttrpc/client.js';

/** The shim's flags as containerd 1.6 passes them. */
export interface ShimFlags {
  namespace: string;
  address: string;
  publishBinary: string;
  id: string;
  debug: boolean;
  bundle: string;
  socket: string;
  version: boolean;
  /** The first argument after the flags (`start`, `delete`), if any. */
  action: string | undefined;
  /** Arguments after the action. */
  args: string[];
}

/** A command line containerd would not send (unknown flag, a missing value). */
export class ShimUsageError extends Error {
  override name = 'ShimUsageError';
}

const STRING_FLAGS = { namespace: 'namespace', address: 'address', 'publish-binary': 'publishBinary', id: 'id', bundle: 'bundle', socket: 'socket' } as const;
const BOOL_FLAGS = { debug: 'debug', v: 'version' } as const;

/** Parses the flags as Go's `flag` package: stops at the first non-flag argument or after `--`. */
export function parseFlags(argv: readonly string[]): ShimFlags {
  const flags: ShimFlags = { namespace: '', address: '', publishBinary: 'containerd', id: '', debug: false, bundle: '', socket: '', version: false, action: undefined, args: [] };
  let i = 0;
  while (i < argv.length) {
    const arg = argv[i]!;
    if (arg === '--') {
      i += 1;
      break;
    }
    if (arg.length < 2 || !arg.startsWith('-')) break;
    const body = arg.startsWith('--') ? arg.slice(2) : arg.slice(1);
    if (body.length === 0 || body.startsWith('-') || body.startsWith('=')) throw new ShimUsageError(`bad flag syntax: ${arg}`);
    const eq = body.indexOf('=');
    const name = eq < 0 ? body : body.slice(0, eq);
    const inline = eq < 0 ? undefined : body.slice(eq + 1);
    i += 1;
    if (Object.hasOwn(BOOL_FLAGS, name)) {
      const key = BOOL_FLAGS[name as keyof typeof BOOL_FLAGS];
      if (inline === undefined) flags[key] = true;
      else if (['1', 't', 'T', 'true', 'TRUE', 'True'].includes(inline)) flags[key] = true;
      else if (['0', 'f', 'F', 'false', 'FALSE', 'False'].includes(inline)) flags[key] = false;
      else throw new ShimUsageError(`invalid boolean value ${JSON.stringify(inline)} for -${name}`);
      continue;
    }
    if (Object.hasOwn(STRING_FLAGS, name)) {
      let value = inline;
      if (value === undefined) {
        if (i >= argv.length) throw new ShimUsageError(`flag needs an argument: -${name}`);
        value = argv[i]!;
        i += 1;
      }
      flags[STRING_FLAGS[name as keyof typeof STRING_FLAGS]] = value;
      continue;
    }
    throw new ShimUsageError(`flag provided but not defined: -${name}`);
  }
  flags.action = argv[i];
  flags.args = argv.slice(i + 1);
  return flags;
}

// containerd's own rule for namespace names (namespaces.Validate): labels of letters and digits
// joined by '.', '_' or '-', at most 76 characters.
const NAMESPACE = /^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$/u;

/** Whether `namespace` is a name containerd accepts (and so safe in a path). */
export function validNamespace(namespace: string): boolean {
  return namespace.length <= 76 && NAMESPACE.test(namespace);
}

/** Where containerd's shims put their sockets, whatever containerd's root. */
export const SOCKET_DIR = '/run/containerd/s';
/** Where the shim servers keep their logs and locks. */
export const SERVER_BASE = '/run/vmpod-shim';

export interface ServerPaths {
  /** sha256 of (containerd address, namespace), hex. */
  key: string;
  socketPath: string;
  /** `unix://` + socketPath: what `start` prints. */
  address: string;
  serverDir: string;
  lockPath: string;
  logPath: string;
}

/**
 * The server of containerd `address` and `namespace`: its socket is SOCKET_DIR/HASH (82 bytes
 * with the default directory, under the 107 a unix socket path may have), its directory
 * SERVER_BASE/NAMESPACE-HASH16. `env` may move both (VMPOD_SHIM_SOCKET_DIR, VMPOD_SHIM_DIR: tests).
 */
export function serverPaths(address: string, namespace: string, env: NodeJS.ProcessEnv = process.env): ServerPaths {
  if (!validNamespace(namespace)) throw new ShimUsageError(`namespace ${JSON.stringify(namespace)} is not a valid containerd namespace`);
  const key = createHash('sha256').update(`vmpod-shim\0${address}\0${namespace}`).digest('hex');
  const socketPath = path.join(env['VMPOD_SHIM_SOCKET_DIR'] ?? SOCKET_DIR, key);
  if (Buffer.byteLength(socketPath) > 107) throw new ShimUsageError(`socket path ${socketPath} is over the 107 bytes a unix socket path may have`);
  const serverDir = path.join(env['VMPOD_SHIM_DIR'] ?? SERVER_BASE, `${namespace}-${key.slice(0, 16)}`);
  return { key, socketPath, address: `unix://${socketPath}`, serverDir, lockPath: path.join(serverDir, 'start.lock'), logPath: path.join(serverDir, 'shim.log') };
}

/** The DeleteResponse `delete` prints: no pid, exit status 128 + SIGKILL, exited now. */
export function deleteResponseBytes(now = new Date()): Buffer {
  return encodeMessage('containerd.task.v2.DeleteResponse', { pid: 0, exitStatus: 137, exitedAt: now });
}

/** containerd's ttRPC address: TTRPC_ADDRESS, else its gRPC address + `.ttrpc` (containerd's default). */
export function ttrpcAddressOf(flags: ShimFlags, env: NodeJS.ProcessEnv): string {
  const fromEnv = env['TTRPC_ADDRESS'];
  if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
  return `${flags.address}.ttrpc`;
}

export interface MainIo {
  stdout: (data: string | Uint8Array) => void;
  stderr: (data: string) => void;
  env: NodeJS.ProcessEnv;
  cwd: string;
}

/** Writes all of `data` to `fd` (a pipe may take it in parts). */
function writeAllSync(fd: number, data: string | Uint8Array): void {
  const bytes = typeof data === 'string' ? Buffer.from(data) : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  let offset = 0;
  while (offset < bytes.length) {
    try {
      offset += fs.writeSync(fd, bytes, offset, bytes.length - offset);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EAGAIN') throw error;
    }
  }
}

const defaultIo = (): MainIo => ({
  stdout: (d) => writeAllSync(1, d),
  stderr: (d) => writeAllSync(2, d),
  env: process.env,
  cwd: process.cwd(),
});

/** Runs the shim command; resolves with the exit code (the `serve` action resolves when the server has closed). */
export async function main(argv: readonly string[], io: MainIo = defaultIo()): Promise<number> {
  let flags: ShimFlags;
  try {
    flags = parseFlags(argv);
  } catch (error) {
    io.stderr(`containerd-shim-vmpod-v2: ${(error as Error).message}\n`);
    return 2;
  }
  if (flags.version) {
    io.stdout(`containerd-shim-vmpod-v2:\n  Version:  ${packageVersion()}\n`);
    return 0;
  }
  try {
    switch (flags.action) {
      case 'start':
        io.stdout(await start(flags, io));
        return 0;
      case 'delete':
        return await deleteAfterCrash(flags, io);
      case 'serve':
        return await serve(flags, io);
      default:
        io.stderr(`containerd-shim-vmpod-v2: ${flags.action === undefined ? 'no action' : `unknown action ${JSON.stringify(flags.action)}`}: start or delete\n`);
        return 2;
    }
  } catch (error) {
    io.stderr(`containerd-shim-vmpod-v2: ${flags.action}: ${(error as Error).message}\n`);
    return 1;
  }
}

function packageVersion(): string {
  try {
    return (JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

function needFlags(flags: ShimFlags, names: ('namespace' | 'address' | 'id')[]): void {
  for (const name of names) if (flags[name] === '') throw new ShimUsageError(`-${name} is required`);
}

/** Whether a server accepts connections on `socketPath`. */
async function answers(socketPath: string): Promise<boolean> {
  try {
    (await TtrpcClient.connect(socketPath, { timeoutMs: 5000 })).close();
    return true;
  } catch {
    return false;
  }
}

/** Asks the server at `socketPath` to hold itself for task `id`; false when no server answers there. */
async function reserve(socketPath: string, id: string): Promise<boolean> {
  let client: TtrpcClient;
  try {
    client = await TtrpcClient.connect(socketPath, { timeoutMs: 5000 });
  } catch {
    return false;
  }
  try {
    await client.call(MANAGER_SERVICE, 'Reserve', Buffer.from(id, 'utf8'), { timeoutMs: 10_000 });
    return true;
  } catch {
    return false;
  } finally {
    client.close();
  }
}

/** The `start` action: the address (without a newline, as containerd's own shims print it). */
export async function start(flags: ShimFlags, io: MainIo): Promise<string> {
  needFlags(flags, ['namespace', 'address', 'id']);
  const paths = serverPaths(flags.address, flags.namespace, io.env);
  fs.mkdirSync(paths.serverDir, { recursive: true, mode: 0o700 });
  fs.mkdirSync(path.dirname(paths.socketPath), { recursive: true, mode: 0o711 });
  const lock = await FileLock.acquire(paths.lockPath, { timeoutMs: 60_000 });
  try {
    if (!(await reserve(paths.socketPath, flags.id))) {
      await spawnServer(flags, paths, io);
      if (!(await reserve(paths.socketPath, flags.id))) throw new Error(`the shim server started but does not answer on ${paths.socketPath}; see ${paths.logPath}`);
    }
    const bundle = flags.bundle !== '' ? flags.bundle : io.cwd;
    await writeFileAtomic(path.join(bundle, 'address'), paths.address, 0o600);
  } finally {
    await lock.release();
  }
  return paths.address;
}

/** Spawns `serve` detached (own session; stdout/stderr to its log; fd 3 a pipe it says `ready` on). */
async function spawnServer(flags: ShimFlags, paths: ServerPaths, io: MainIo): Promise<void> {
  const script = fileURLToPath(import.meta.url);
  const args = [
    ...process.execArgv.filter((a) => !a.startsWith('--inspect')),
    '--no-warnings',
    script,
    '-namespace',
    flags.namespace,
    '-address',
    flags.address,
    '-socket',
    paths.socketPath,
    ...(flags.debug ? ['-debug'] : []),
    'serve',
  ];
  const out = fs.openSync(paths.logPath, 'a', 0o600);
  let child;
  try {
    child = spawn(process.execPath, args, {
      cwd: '/',
      detached: true,
      stdio: ['ignore', out, out, 'pipe'],
      env: { ...io.env, TTRPC_ADDRESS: ttrpcAddressOf(flags, io.env) },
    });
  } finally {
    fs.closeSync(out);
  }
  const ready = child.stdio[3] as NodeJS.ReadableStream & { destroy(): void };
  try {
    await new Promise<void>((resolve, reject) => {
      let text = '';
      const timer = setTimeout(() => reject(new Error(`the shim server did not get ready within 30 s; see ${paths.logPath}`)), 30_000);
      const done = (error?: Error): void => {
        clearTimeout(timer);
        if (error) reject(error);
        else resolve();
      };
      ready.on('data', (chunk: Buffer) => {
        text += chunk.toString();
        if (text.includes('ready\n')) done();
      });
      child.once('error', (error) => done(error));
      child.once('exit', (code, signal) => done(new Error(`the shim server exited (${signal ?? `status ${code}`}) before it was ready; see ${paths.logPath}`)));
    });
  } catch (error) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    throw error;
  } finally {
    ready.destroy();
    child.unref();
  }
}

/** The `serve` action: runs the server until it closes. */
async function serve(flags: ShimFlags, io: MainIo): Promise<number> {
  needFlags(flags, ['namespace', 'address']);
  const paths = serverPaths(flags.address, flags.namespace, io.env);
  const socketPath = flags.socket !== '' ? flags.socket : paths.socketPath;
  let closed!: () => void;
  const whenClosed = new Promise<void>((resolve) => (closed = resolve));
  const server = new ShimServer({
    namespace: flags.namespace,
    ttrpcAddress: ttrpcAddressOf(flags, io.env),
    socketPath,
    serverDir: paths.serverDir,
    lockPath: paths.lockPath,
    debug: flags.debug,
    taskService: (options) => new TaskService(options),
    // How long a task `start` reserved holds the server without its Create (tests shorten it).
    ...(io.env['VMPOD_SHIM_RESERVATION_MS'] === undefined ? {} : { reservationMs: Number(io.env['VMPOD_SHIM_RESERVATION_MS']) }),
    onClosed: () => closed(),
  });
  const log = server.log;
  process.on('unhandledRejection', (reason) => log.error(`unhandled rejection: ${reason instanceof Error ? (reason.stack ?? reason.message) : String(reason)}`));
  process.on('uncaughtException', (error) => log.error(`uncaught exception: ${error.stack ?? error.message}`));
  for (const signal of ['SIGTERM', 'SIGINT'] as const) process.on(signal, () => void server.close(signal));
  process.on('SIGPIPE', () => undefined);
  await server.listen();
  tellReady(log);
  await whenClosed;
  return 0;
}

// `start` waits for `ready` on fd 3 (a pipe it made); closing it lets `start` go.
function tellReady(log: ShimLog): void {
  try {
    fs.writeSync(3, 'ready\n');
    fs.closeSync(3);
  } catch (error) {
    log.debug(`no readiness pipe on fd 3: ${(error as Error).message}`);
  }
}

/** The `delete` action: clean up after a dead server, print the DeleteResponse. */
async function deleteAfterCrash(flags: ShimFlags, io: MainIo): Promise<number> {
  needFlags(flags, ['namespace', 'id']);
  const bundle = flags.bundle !== '' ? flags.bundle : io.cwd;
  const log: ShimLog = {
    debug: () => undefined,
    info: () => undefined,
    warn: (m) => io.stderr(`containerd-shim-vmpod-v2: delete: ${m}\n`),
    error: (m) => io.stderr(`containerd-shim-vmpod-v2: delete: ${m}\n`),
  };
  // Best effort: containerd removes the bundle only when delete succeeds, so a failure here is
  // reported on stderr and the answer is given anyway.
  try {
    await Pods.cleanupAfterCrash({ namespace: flags.namespace, id: flags.id, bundle, log });
  } catch (error) {
    log.warn(`task ${flags.id}: ${(error as Error).message}`);
  }
  // containerd 1.6 runs `delete` after every closed connection, also after a normal Delete: a
  // server that still answers owns its tasks' mounts (its Delete unmounted them).
  const paths = flags.address === '' ? undefined : serverPaths(flags.address, flags.namespace, io.env);
  if (paths === undefined || !(await answers(paths.socketPath))) {
    try {
      await unmountRootfs(bundle);
    } catch (error) {
      log.warn(`task ${flags.id}: rootfs: ${(error as Error).message}`);
    }
    if (paths !== undefined) {
      try {
        await removeDeadSocket(paths);
      } catch (error) {
        log.warn(`server socket ${paths.socketPath}: ${(error as Error).message}`);
      }
    }
  }
  io.stdout(deleteResponseBytes());
  return 0;
}

/**
 * Removes the socket of a server that died (kill -9 leaves it in /run/containerd/s). Under the
 * start lock, so that a `start` spawning a new server there is not undone; bounded, because
 * containerd gives `delete` 5 s.
 */
async function removeDeadSocket(paths: ServerPaths): Promise<void> {
  let lock: FileLock;
  try {
    lock = await FileLock.acquire(paths.lockPath, { timeoutMs: 2000 });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;  // no server was ever started here
    throw error;
  }
  try {
    const stat = await fs.promises.lstat(paths.socketPath).catch(() => undefined);
    if (!stat?.isSocket()) return;
    if (await answers(paths.socketPath)) return;
    await fs.promises.unlink(paths.socketPath);
  } finally {
    await lock.release();
  }
}

/** True when this file is the process's entry point (the bin), not a module imported by a test. */
function isEntryPoint(): boolean {
  try {
    return process.argv[1] !== undefined && fs.realpathSync(process.argv[1]) === fs.realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
  // Nothing but what main writes may reach stdout/stderr (containerd reads start's output whole).
  process.removeAllListeners('warning');
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (error: unknown) => {
      try {
        fs.writeSync(2, `containerd-shim-vmpod-v2: internal error: ${(error as Error).message}\n`);
      } finally {
        process.exit(1);
      }
    },
  );
}
