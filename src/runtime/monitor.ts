#!/usr/bin/env node
/**
 * The per-container monitor: the host process whose pid `create --pid-file` (and `exec
 * --detach --pid-file`) gives. `create` spawns it detached (a session of its own, but a child of
 * `create`, so it is reparented to the caller's subreaper: conmon and containerd's shim wait for
 * it). It creates the container (booting or joining its VM), so it holds the container's stdio:
 * it inherits the fds the caller gave `create` as 0/1/2 and pipes them to and from the
 * container, or relays a host terminal's slave to the container's terminal. It answers `start`,
 * `kill`, `pause`, `resume`, `update` and `delete` on a unix socket, forwards the signals it
 * gets (TERM, INT, HUP, QUIT, USR2) to the container's init, and exits with the init's status:
 * its exit code, or, when a signal killed it, by the same signal (so a waiting caller sees
 * WIFSIGNALED, as with runc), 128 + N when that signal cannot kill a Node process.
 *
 * Its readiness goes to `create` on fd 3: one JSON line, `{"ready":true}` or `{"error":"..."}`.
 *
 * @module
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import tty from 'node:tty';
import os from 'node:os';
import type { Readable, Writable } from 'node:stream';
import type { Container, Process } from '../container/container.js';
import type { Sandbox } from '../sandbox/sandbox.js';
import type { NativeAddon } from '../native.js';
import { writeFileAtomic } from '../state/atomic.js';
import { serveControl, type ControlRequest } from './control.js';
import { runHooks, runHooksWarning, specHooks, type SpecHooks } from './hooks.js';
import { RuntimeError, errorMessage, writeLog, type LogTarget } from './log.js';
import { networkNamespace, vmSize } from './sandbox-choice.js';
import { RuntimeRoot, ociState, selfIdentity, type RuntimeRecord } from './state.js';
import { readableOf, writableOf } from './stdio.js';
import { releaseSandbox, sandboxLock } from './release.js';
import { knownResources } from './resources.js';

/** A process to exec, from `exec --process FILE` or exec's arguments. */
export interface ExecProcess {
  args: string[];
  env?: string[];
  cwd?: string;
  user?: { uid: number; gid: number; additionalGids?: number[] };
  terminal: boolean;
}

/** What a monitor is told (argv[2], JSON). */
export interface MonitorConfig {
  mode: 'container' | 'exec';
  root: string;
  id: string;
  log: LogTarget;
  pidFile?: string;
  consoleSocket?: string;
  /** exec mode: the process. */
  process?: ExecProcess;
}

/** How the monitor tells its starter how the create (or exec) went. */
export type Notify = (message: { ready: true } | { error: string }) => void;

export interface Terminal {
  master: number;
  slave: number;
  name: string;
}

/** Opens a host terminal and sends its master over the console socket, as runc does (the fd as SCM_RIGHTS, the pty's name as data). */
export function openTerminal(native: NativeAddon, consoleSocket: string): Terminal {
  const pty = native.openPty();
  let socket = -1;
  try {
    native.setRawMode(pty.slave);
    socket = native.unixConnect(consoleSocket);
    native.sendFds(socket, Buffer.from(pty.name), [pty.master]);
  } catch (error) {
    native.closeFd(pty.master);
    native.closeFd(pty.slave);
    throw new RuntimeError(`console socket ${consoleSocket}: ${(error as Error).message}`, { cause: error });
  } finally {
    if (socket >= 0) native.closeFd(socket);
  }
  native.closeFd(pty.master);
  return { ...pty, master: -1 };
}

/** The monitor's ends of the process's stdio, wired; resolves `done()` once its outputs were written out. */
export function wireStdio(proc: Pick<Process, 'stdin' | 'stdout' | 'stderr'>, terminal: Terminal | undefined, onResize: (size: { rows: number; cols: number }) => void, native: NativeAddon | undefined): { done(): Promise<void> } {
  let input: Readable | undefined;
  let outputs: [Readable | null, Writable | undefined][];
  if (terminal && native) {
    input = new tty.ReadStream(terminal.slave);
    const writeFd = fs.openSync(terminal.name, fs.constants.O_RDWR | fs.constants.O_NOCTTY);
    outputs = [[proc.stdout, new tty.WriteStream(writeFd)]];
    // The slave is this process's controlling terminal: the kernel sends SIGWINCH when the
    // caller resizes the master, and SIGHUP when it closes it.
    try {
      native.setControllingTerminal(terminal.slave);
    } catch {
      // not a session leader (an inline exec): no resize forwarding
    }
    const resize = (): void => {
      try {
        const size = native.getWindowSize(terminal.slave);
        if (size.rows > 0 && size.cols > 0) onResize(size);
      } catch {
        // terminal gone
      }
    };
    process.on('SIGWINCH', resize);
    resize();
  } else {
    input = readableOf(0);
    outputs = [[proc.stdout, writableOf(1)], [proc.stderr, writableOf(2)]];
  }
  if (proc.stdin) {
    if (input) {
      input.on('error', () => proc.stdin!.end());
      input.pipe(proc.stdin);
    } else {
      proc.stdin.end();
    }
  }
  const finished: Promise<void>[] = [];
  for (const [from, to] of outputs) {
    if (!from) continue;
    if (!to) {
      from.resume();
      continue;
    }
    to.on('error', () => from.resume());
    from.pipe(to, { end: false });
    finished.push(new Promise((resolve) => {
      from.once('end', resolve);
      from.once('error', () => resolve());
      from.once('close', () => resolve());
    }));
  }
  return {
    async done(): Promise<void> {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([Promise.all(finished), new Promise((resolve) => (timer = setTimeout(resolve, 10_000)))]);
      clearTimeout(timer);
      // What was piped is in the destinations' queues: let them drain.
      await Promise.all(outputs.map(([, to]) => (to && to.writableLength > 0 ? new Promise((resolve) => { to.once('drain', resolve); setTimeout(resolve, 5_000); }) : undefined)));
    },
  };
}

/** Exits with `status`: the code, or by re-raising the signal that killed the process. */
export function exitWith(status: { exitCode: number; signal: number }): never {
  if (status.signal > 0) {
    const name = Object.entries(os.constants.signals).find(([, n]) => n === status.signal)?.[0] as NodeJS.Signals | undefined;
    if (name !== undefined && name !== 'SIGSTOP' && name !== 'SIGTSTP' && name !== 'SIGTTIN' && name !== 'SIGTTOU') {
      process.removeAllListeners(name);
      try {
        process.kill(process.pid, name);
      } catch {
        // cannot raise it: fall through to the code
      }
    }
    // Signals a Node process ignores (SIGPIPE) or stops on: 128 + N, as a shell reports it.
    setTimeout(() => process.exit(128 + status.signal), 200).unref();
    // Keep the event loop from ending before the signal arrives.
    setInterval(() => undefined, 1000);
    return undefined as never;
  }
  process.exit(status.exitCode);
}

const FORWARDED: NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR2'];

async function writePidFile(file: string | undefined): Promise<void> {
  if (file !== undefined) await writeFileAtomic(file, String(process.pid), 0o644);
}

/** The container monitor: creates the container, then serves it until it exits or is deleted. */
export async function monitorContainer(config: MonitorConfig, notify: Notify): Promise<void> {
  const root = new RuntimeRoot(config.root);
  let record = await root.update(config.id, (r) => void (r.monitor = selfIdentity()));
  const [{ Sandbox }, { NotFoundError }, { native }] = await Promise.all([import('../sandbox/sandbox.js'), import('../errors.js'), import('../native.js')]);
  const spec = JSON.parse(await fsp.readFile(path.join(record.bundle, 'config.json'), 'utf8')) as { hooks?: Record<string, unknown>; linux?: { namespaces?: { type: string; path?: string }[] } };
  const hooks: SpecHooks = specHooks(spec);
  const stateDir = root.vmpodStateDir();
  let sandbox: Sandbox | undefined;
  let container: Container | undefined;
  let terminal: Terminal | undefined;
  try {
    const lock = await sandboxLock(root, record.sandbox);
    try {
      try {
        sandbox = await Sandbox.attach(record.sandbox, { stateDir });
      } catch (error) {
        if (!(error instanceof NotFoundError)) throw error;
        const netns = networkNamespace(spec);
        writeLog(config.log, 'debug', `creating sandbox ${record.sandbox}${netns === undefined ? ' without a network' : ` with the interfaces of ${netns}`}`);
        sandbox = await Sandbox.create({ id: record.sandbox, stateDir, agentPorts: 16, ...vmSize(record.annotations), ...(netns === undefined ? {} : { network: { netns } }) });
      }
      sandbox.on('error', (error) => writeLog(config.log, 'warning', `sandbox ${record.sandbox}: ${errorMessage(error)}`));
      if (sandbox.state === 'paused') await sandbox.resume();
      else if (sandbox.state !== 'running') await sandbox.start();
      if (record.terminal) terminal = openTerminal(native(), config.consoleSocket!);
      container = await sandbox.createContainer({
        id: config.id,
        bundle: record.bundle,
        process: { terminal: record.terminal },
        stdio: { stdin: true, stdout: true, stderr: !record.terminal },
        log: false,
      });
    } finally {
      await lock.release();
    }
    record = await root.update(config.id, (r) => void (r.status = 'created'));
    await runHooks(hooks.prestart, ociState(record), 'prestart');
    await runHooks(hooks.createRuntime, ociState(record), 'createRuntime');
    await writePidFile(config.pidFile);
  } catch (error) {
    if (terminal) {
      native().closeFd(terminal.slave);
    }
    await container?.delete({ force: true }).catch(() => undefined);
    await releaseSandbox(root, record.sandbox, config.id).catch(() => undefined);
    throw error;
  }
  await serveContainer(config, root, sandbox!, container!, hooks, terminal, native(), notify);
}

async function serveContainer(config: MonitorConfig, root: RuntimeRoot, sandbox: Sandbox, container: Container, hooks: SpecHooks, terminal: Terminal | undefined, native: NativeAddon, notify: Notify): Promise<void> {
  const id = config.id;
  let status: RuntimeRecord['status'] = 'created';
  let deleting = false;
  let exitStatus: { exitCode: number; signal: number } | undefined;
  const io = wireStdio(container.init!, terminal, (size) => void container.resizeTty(size).catch(() => undefined), native);
  for (const signal of FORWARDED) {
    process.on(signal, () => {
      if (status === 'running' || status === 'paused') void container.kill(signal).catch(() => undefined);
    });
  }

  const finish = async (): Promise<void> => {
    server.close();
    await fsp.rm(root.socket(id), { force: true });
    exitWith(exitStatus ?? { exitCode: 137, signal: 9 });
  };

  const onExit = async (exit: { exitCode: number; signal: number }): Promise<void> => {
    exitStatus = { exitCode: exit.exitCode, signal: exit.signal };
    if (deleting) return;
    status = 'stopped';
    await root.update(id, (r) => {
      r.status = 'stopped';
      r.exit = { exitCode: exit.exitCode, signal: exit.signal };
    }).catch(() => undefined);
    await io.done();
    if (!deleting) await finish();
  };

  const handle = async (request: ControlRequest): Promise<(() => void) | void> => {
    switch (request.op) {
      case 'start': {
        if (status !== 'created') throw new RuntimeError(status === 'stopped' ? 'cannot start a container that has stopped' : 'cannot start an already running container');
        await container.start();
        status = 'running';
        const record = await root.update(id, (r) => void (r.status = 'running'));
        await runHooksWarning(hooks.poststart, ociState(record), 'poststart', (error) => writeLog(config.log, 'warning', errorMessage(error)));
        return;
      }
      case 'kill':
        if (status === 'stopped') throw new RuntimeError('container not running');
        await container.kill(request.signal, { all: request.all });
        return;
      case 'pause': {
        if (status !== 'running') throw new RuntimeError(`container not running`);
        await container.pause();
        status = 'paused';
        await root.update(id, (r) => void (r.status = 'paused'));
        return;
      }
      case 'resume': {
        if (status !== 'paused') throw new RuntimeError('container not paused');
        await container.resume();
        status = 'running';
        await root.update(id, (r) => void (r.status = 'running'));
        return;
      }
      case 'update': {
        const resources = knownResources(request.resources);
        if (Object.keys(resources).length > 0) await container.update(resources);
        return;
      }
      case 'delete': {
        if ((status === 'running' || status === 'paused') && !request.force) throw new RuntimeError(`cannot delete container ${id} that is not stopped: ${status}`);
        deleting = true;
        const record = await root.read(id);
        await container.delete({ force: true });
        await releaseSandbox(root, record.sandbox, id);
        await fsp.rm(root.containerDir(id), { recursive: true, force: true });
        await runHooksWarning(record.poststop ?? [], { ...ociState(record), status: 'stopped', pid: 0 }, 'poststop', (error) => writeLog(config.log, 'warning', errorMessage(error)));
        return () => void finish();
      }
      default:
        throw new RuntimeError(`unknown request ${(request as { op: string }).op}`);
    }
  };

  await fsp.mkdir(path.dirname(root.socket(id)), { recursive: true, mode: 0o700 });
  await fsp.rm(root.socket(id), { force: true });
  const server = await serveControl(root.socket(id), handle);
  // Watched from creation on: a container killed before it was started (a caller's cleanup:
  // kill, then delete) is stopped, and its monitor exits, as runc's init would.
  container.wait().then(onExit, () => onExit({ exitCode: 137, signal: 9 }));
  notify({ ready: true });
}

/** An exec'd process, served until it exits: its stdio, its terminal, its exit status. */
export async function monitorExec(config: MonitorConfig, notify: Notify): Promise<void> {
  const root = new RuntimeRoot(config.root);
  const record = await root.read(config.id);
  const [{ Sandbox }, { native }] = await Promise.all([import('../sandbox/sandbox.js'), import('../native.js')]);
  const spec = config.process!;
  const sandbox = await Sandbox.attach(record.sandbox, { stateDir: root.vmpodStateDir() });
  sandbox.on('error', () => undefined);
  const container = await sandbox.container(config.id);
  let terminal: Terminal | undefined;
  if (spec.terminal && config.consoleSocket !== undefined) terminal = openTerminal(native(), config.consoleSocket);
  let proc: Process;
  try {
    proc = await container.exec({
      args: spec.args,
      ...(spec.env === undefined ? {} : { env: spec.env }),
      ...(spec.cwd === undefined ? {} : { cwd: spec.cwd }),
      ...(spec.user === undefined ? {} : { user: spec.user }),
      terminal: spec.terminal,
      stdio: { stdin: true, stdout: true, stderr: !spec.terminal },
    });
    await writePidFile(config.pidFile);
  } catch (error) {
    if (terminal) native().closeFd(terminal.slave);
    throw error;
  }
  const io = wireStdio(proc, terminal, (size) => void proc.resizeTty(size).catch(() => undefined), terminal ? native() : undefined);
  for (const signal of FORWARDED) process.on(signal, () => void proc.kill(signal).catch(() => undefined));
  notify({ ready: true });
  const status = await proc.wait().catch(() => ({ exitCode: 137, signal: 9 }));
  await io.done();
  exitWith(status);
}

/** Tells the starter through fd 3 (once), then closes it. */
function notifier(): Notify {
  let told = false;
  return (message) => {
    if (told) return;
    told = true;
    try {
      fs.writeSync(3, `${JSON.stringify(message)}\n`);
      fs.closeSync(3);
    } catch {
      // the starter is gone: nothing to tell
    }
  };
}

async function main(): Promise<void> {
  const config = JSON.parse(process.argv[2] ?? '{}') as MonitorConfig;
  const notify = notifier();
  // A SIGHUP from a closing terminal must not kill the monitor before it could forward it.
  process.on('SIGHUP', () => undefined);
  try {
    if (config.mode === 'exec') await monitorExec(config, notify);
    else await monitorContainer(config, notify);
  } catch (error) {
    notify({ error: errorMessage(error) });
    process.exit(1);
  }
}

if (process.argv[1] !== undefined && fs.realpathSync(process.argv[1]) === fs.realpathSync(fileURLToPath(import.meta.url))) void main();
