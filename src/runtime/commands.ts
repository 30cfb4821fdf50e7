/**
 * The commands of `vmpod-runtime` that change or look into containers (main.ts runs `state`,
 * `list`, `features` and `--version` itself, without loading this module).
 *
 * @module
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Options, RuntimeArgs } from './args.js';
import { control } from './control.js';
import { specHooks } from './hooks.js';
import { RuntimeError, errorMessage, writeLog, type LogTarget } from './log.js';
import type { ExecProcess, MonitorConfig } from './monitor.js';
import { librarySandboxId, sandboxName } from './sandbox-choice.js';
import { parseSignal } from './signals.js';
import { RuntimeRoot, alive, checkId, currentStatus, ociState, selfIdentity, type RuntimeRecord } from './state.js';

/** What every command gets. */
export interface Context {
  root: RuntimeRoot;
  log: LogTarget;
}

const MONITOR = fileURLToPath(new URL('./monitor.js', import.meta.url));

function str(options: Options, name: string): string | undefined {
  const v = options[name];
  return typeof v === 'string' ? v : undefined;
}

function absolute(file: string | undefined): string | undefined {
  return file === undefined ? undefined : path.resolve(file);
}

/** Spawns a monitor and waits for its readiness line; resolves with the child once it is ready. */
async function spawnMonitor(config: MonitorConfig): Promise<ChildProcess> {
  const child = spawn(process.execPath, [MONITOR, JSON.stringify(config)], { stdio: ['inherit', 'inherit', 'inherit', 'pipe'], detached: true });
  const channel = child.stdio[3] as NodeJS.ReadableStream;
  const message = await new Promise<{ ready?: boolean; error?: string } | undefined>((resolve) => {
    let text = '';
    channel.setEncoding('utf8');
    channel.on('data', (chunk: string) => {
      text += chunk;
      const nl = text.indexOf('\n');
      if (nl >= 0) {
        try {
          resolve(JSON.parse(text.slice(0, nl)) as { ready?: boolean; error?: string });
        } catch {
          resolve(undefined);
        }
      }
    });
    channel.on('end', () => resolve(undefined));
    channel.on('error', () => resolve(undefined));
    child.on('exit', () => setTimeout(() => resolve(undefined), 100));
  });
  (channel as unknown as { destroy(): void }).destroy();
  if (message?.ready) return child;
  if (message?.error !== undefined) throw new RuntimeError(message.error);
  // The channel ended without a word: the monitor died. Say how, once the kernel has told us.
  if (child.exitCode === null && child.signalCode === null) {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 5_000);
      child.once('exit', () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
  const how = child.signalCode ?? (child.exitCode === null ? 'still running, silent' : `exit status ${child.exitCode}`);
  throw new RuntimeError(`the container's monitor exited (${how}) before it was ready`);
}

/** `create`: checks the bundle, records the container, spawns its monitor and waits until the container is created. */
export async function create(ctx: Context, args: RuntimeArgs): Promise<ChildProcess> {
  const id = checkId(args.positionals[0]);
  const bundle = path.resolve(str(args.options, 'bundle') ?? process.cwd());
  const { readBundle } = await import('../container/spec.js');
  const { spec, rootfs } = await readBundle(bundle).catch((error: unknown) => {
    throw new RuntimeError(errorMessage(error), { cause: error });
  });
  const terminal = spec.process.terminal === true;
  const consoleSocket = absolute(str(args.options, 'console-socket'));
  if (terminal && consoleSocket === undefined) throw new RuntimeError('cannot allocate tty if vmpod-runtime will detach without setting console socket');
  if (!terminal && consoleSocket !== undefined) throw new RuntimeError('cannot use console socket if vmpod-runtime will not detach or allocate tty');
  const preserve = str(args.options, 'preserve-fds');
  if (preserve !== undefined && preserve !== '0') throw new RuntimeError('--preserve-fds: host file descriptors cannot be passed into the VM (only 0 is accepted)');
  const hooks = specHooks(spec as { hooks?: Record<string, unknown> });
  const annotations = (spec as { annotations?: Record<string, string> }).annotations ?? {};
  const sandbox = librarySandboxId(sandboxName(id, annotations));
  await fsp.mkdir(ctx.root.containers(), { recursive: true, mode: 0o700 });
  try {
    await fsp.mkdir(ctx.root.containerDir(id), { mode: 0o700 });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw new RuntimeError('container with given ID already exists');
    throw error;
  }
  const record: RuntimeRecord = {
    format: 1, id, bundle, rootfs, created: new Date().toISOString(), annotations, sandbox, status: 'creating',
    creator: selfIdentity(), terminal, ...(hooks.poststop.length > 0 ? { poststop: hooks.poststop } : {}),
  };
  try {
    await ctx.root.write(record);
    const pidFile = absolute(str(args.options, 'pid-file'));
    return await spawnMonitor({
      mode: 'container', root: ctx.root.dir, id, log: ctx.log,
      ...(pidFile === undefined ? {} : { pidFile }),
      ...(consoleSocket === undefined ? {} : { consoleSocket }),
    });
  } catch (error) {
    // The monitor undid what it made; a monitor that died without a word may have left a VM.
    await removeContainer(ctx, id, true).catch((cleanup: unknown) => writeLog(ctx.log, 'warning', `cleaning up ${id}: ${errorMessage(cleanup)}`));
    throw error;
  }
}

/** `start` */
export async function start(ctx: Context, args: RuntimeArgs): Promise<void> {
  const id = checkId(args.positionals[0]);
  const status = currentStatus(await ctx.root.read(id));
  if (status === 'stopped') throw new RuntimeError('cannot start a container that has stopped');
  if (status === 'running' || status === 'paused') throw new RuntimeError('cannot start an already running container');
  if (status === 'creating') throw new RuntimeError('cannot start a container that is still being created');
  await control(ctx.root.socket(id), { op: 'start' });
}

/** `kill ID [SIGNAL]` */
export async function kill(ctx: Context, args: RuntimeArgs): Promise<void> {
  const id = checkId(args.positionals[0]);
  const signal = parseSignal(args.positionals[1] ?? 'SIGTERM');
  const status = currentStatus(await ctx.root.read(id));
  if (status === 'stopped' || status === 'creating') throw new RuntimeError('container not running');
  await control(ctx.root.socket(id), { op: 'kill', signal: signal.number, all: args.options['all'] === true });
}

/** `pause` / `resume` */
export async function pauseResume(ctx: Context, args: RuntimeArgs, op: 'pause' | 'resume'): Promise<void> {
  const id = checkId(args.positionals[0]);
  const status = currentStatus(await ctx.root.read(id));
  if (op === 'pause' && status !== 'running') throw new RuntimeError('container not running');
  if (op === 'resume' && status !== 'paused') throw new RuntimeError('container not paused');
  await control(ctx.root.socket(id), { op });
}

/** `update` */
export async function update(ctx: Context, args: RuntimeArgs): Promise<void> {
  const id = checkId(args.positionals[0]);
  const from = str(args.options, 'resources');
  let resources: Record<string, unknown> = {};
  if (from !== undefined) {
    const text = from === '-' ? fs.readFileSync(0, 'utf8') : await fsp.readFile(from, 'utf8');
    try {
      resources = JSON.parse(text) as Record<string, unknown>;
    } catch (error) {
      throw new RuntimeError(`--resources: not JSON (${(error as Error).message})`);
    }
  }
  const num = (name: string): number | undefined => {
    const v = str(args.options, name);
    if (v === undefined) return undefined;
    if (!/^-?[0-9]+$/u.test(v)) throw new RuntimeError(`invalid value for --${name}: ${v}`);
    return Number(v);
  };
  const set = (group: string, key: string, value: number | undefined): void => {
    if (value === undefined) return;
    resources[group] = { ...((resources[group] as object | undefined) ?? {}), [key]: value };
  };
  set('memory', 'limit', num('memory'));
  set('cpu', 'quota', num('cpu-quota'));
  set('cpu', 'period', num('cpu-period'));
  set('cpu', 'shares', num('cpu-shares'));
  set('pids', 'limit', num('pids-limit'));
  const status = currentStatus(await ctx.root.read(id));
  if (status === 'stopped' || status === 'creating') throw new RuntimeError('container not running');
  await control(ctx.root.socket(id), { op: 'update', resources });
}

/** Removes container `id` when its monitor is gone: the container in its VM, the VM with its last container, the record. */
async function removeContainer(ctx: Context, id: string, force: boolean): Promise<void> {
  let record: RuntimeRecord;
  try {
    record = await ctx.root.read(id);
  } catch (error) {
    // A folder without a readable record: nothing else was made for it.
    if (force) await fsp.rm(ctx.root.containerDir(id), { recursive: true, force: true });
    if (error instanceof RuntimeError && error.message === 'container does not exist') return;
    if (force) return;
    throw error;
  }
  if (record.monitor && alive(record.monitor)) {
    // A monitor that does not answer (hung, or killed between its checks): end it.
    process.kill(record.monitor.pid, 'SIGKILL');
  }
  const { Sandbox } = await import('../sandbox/sandbox.js');
  const stateDir = ctx.root.vmpodStateDir();
  try {
    const sandbox = await Sandbox.attach(record.sandbox, { stateDir });
    sandbox.on('error', () => undefined);
    if (sandbox.state === 'running') {
      try {
        const container = await sandbox.container(id);
        await container.delete({ force: true });
      } catch (error) {
        if ((error as { code?: string }).code !== 'ERR_VMPOD_NOT_FOUND' && !force) throw error;
      }
    }
    sandbox.detach();
  } catch (error) {
    if ((error as { code?: string }).code !== 'ERR_VMPOD_NOT_FOUND' && !force) throw error;
  }
  const { releaseSandbox } = await import('./release.js');
  await releaseSandbox(ctx.root, record.sandbox, id);
  await fsp.rm(ctx.root.containerDir(id), { recursive: true, force: true });
  await fsp.rm(ctx.root.socket(id), { force: true });
  if (record.poststop && record.poststop.length > 0) {
    const { runHooksWarning } = await import('./hooks.js');
    await runHooksWarning(record.poststop, { ...ociState(record), status: 'stopped', pid: 0 }, 'poststop', (error) => writeLog(ctx.log, 'warning', errorMessage(error)));
  }
}

/** `delete [--force] ID` */
export async function remove(ctx: Context, args: RuntimeArgs): Promise<void> {
  const id = checkId(args.positionals[0]);
  const force = args.options['force'] === true;
  let record: RuntimeRecord;
  try {
    record = await ctx.root.read(id);
  } catch (error) {
    if (force && error instanceof RuntimeError && error.message !== 'container does not exist') {
      await fsp.rm(ctx.root.containerDir(id), { recursive: true, force: true });
      return;
    }
    throw error;
  }
  const status = currentStatus(record);
  if ((status === 'running' || status === 'paused') && !force) throw new RuntimeError(`cannot delete container ${id} that is not stopped: ${status}`);
  if (status === 'creating' && !force) throw new RuntimeError(`cannot delete container ${id} that is being created`);
  if (status !== 'stopped' && status !== 'creating') {
    try {
      await control(ctx.root.socket(id), { op: 'delete', force });
      return;
    } catch (error) {
      // The monitor left meanwhile, or cannot be reached: finish from the record.
      if (!force && !(error instanceof RuntimeError && error.message === 'container not running')) throw error;
    }
  }
  if (status === 'creating' && record.creator && alive(record.creator)) process.kill(record.creator.pid, 'SIGKILL');
  await removeContainer(ctx, id, force);
}

/** The process of `exec`: from --process FILE or the arguments and flags. */
export async function execProcess(args: RuntimeArgs): Promise<ExecProcess> {
  const file = str(args.options, 'process');
  let proc: ExecProcess;
  if (file !== undefined) {
    let value: Record<string, unknown>;
    try {
      value = JSON.parse(await fsp.readFile(file, 'utf8')) as Record<string, unknown>;
    } catch (error) {
      throw new RuntimeError(`--process ${file}: ${(error as Error).message}`);
    }
    const strings = (v: unknown): v is string[] => Array.isArray(v) && v.every((s) => typeof s === 'string');
    if (!strings(value['args']) || value['args'].length === 0) throw new RuntimeError(`--process ${file}: "args" must be a non-empty array of strings`);
    proc = { args: value['args'], terminal: value['terminal'] === true };
    if (value['env'] !== undefined) {
      if (!strings(value['env'])) throw new RuntimeError(`--process ${file}: "env" must be an array of strings`);
      proc.env = value['env'];
    }
    if (typeof value['cwd'] === 'string' && value['cwd'] !== '') proc.cwd = value['cwd'];
    const user = value['user'] as { uid?: unknown; gid?: unknown; additionalGids?: unknown } | undefined;
    if (user !== undefined) {
      const uid = typeof user.uid === 'number' ? user.uid : 0;
      const gid = typeof user.gid === 'number' ? user.gid : 0;
      proc.user = { uid, gid, ...(Array.isArray(user.additionalGids) && user.additionalGids.length > 0 ? { additionalGids: user.additionalGids as number[] } : {}) };
    }
  } else {
    if (args.rest.length === 0) throw new RuntimeError('exec args cannot be empty');
    proc = { args: args.rest, terminal: false };
  }
  if (args.options['tty'] === true) proc.terminal = true;
  const env = args.options['env'];
  if (Array.isArray(env)) proc.env = [...(proc.env ?? []), ...env];
  const cwd = str(args.options, 'cwd');
  if (cwd !== undefined) proc.cwd = cwd;
  const user = str(args.options, 'user');
  if (user !== undefined) {
    const m = /^([0-9]+)(?::([0-9]+))?$/u.exec(user);
    if (!m) throw new RuntimeError(`--user ${user}: give UID or UID:GID (numbers: names are not resolved)`);
    proc.user = { uid: Number(m[1]), gid: Number(m[2] ?? '0') };
  }
  const gids = args.options['additional-gids'];
  if (Array.isArray(gids) && proc.user) proc.user.additionalGids = gids.map(Number);
  return proc;
}

/** `exec`: detached, through an exec monitor; else in this process, which exits with the process's status. */
export async function exec(ctx: Context, args: RuntimeArgs): Promise<void> {
  const id = checkId(args.positionals[0]);
  const status = currentStatus(await ctx.root.read(id));
  if (status !== 'running') throw new RuntimeError(status === 'stopped' ? 'cannot exec in a stopped container' : `cannot exec in a ${status} container`);
  const proc = await execProcess(args);
  const preserve = str(args.options, 'preserve-fds');
  if (preserve !== undefined && preserve !== '0') throw new RuntimeError('--preserve-fds: host file descriptors cannot be passed into the VM (only 0 is accepted)');
  const detach = args.options['detach'] === true;
  const consoleSocket = absolute(str(args.options, 'console-socket'));
  if (proc.terminal && detach && consoleSocket === undefined) throw new RuntimeError('cannot allocate tty if vmpod-runtime will detach without setting console socket');
  if (!proc.terminal && consoleSocket !== undefined) throw new RuntimeError('cannot use console socket if vmpod-runtime will not detach or allocate tty');
  const pidFile = absolute(str(args.options, 'pid-file'));
  const config: MonitorConfig = {
    mode: 'exec', root: ctx.root.dir, id, log: ctx.log, process: proc,
    ...(pidFile === undefined ? {} : { pidFile }),
    ...(consoleSocket === undefined ? {} : { consoleSocket }),
  };
  if (detach) {
    (await spawnMonitor(config)).unref();
    return;
  }
  const { monitorExec } = await import('./monitor.js');
  await monitorExec(config, () => undefined);
  // monitorExec exits the process with the exec'd process's status.
  await new Promise(() => undefined);
}

/** `run`: create + start; without --detach, waits for the container and exits with its status (and deletes it unless --keep). */
export async function run(ctx: Context, args: RuntimeArgs): Promise<number> {
  const monitor = await create(ctx, args);
  const id = args.positionals[0]!;
  try {
    await start(ctx, args);
  } catch (error) {
    await removeContainer(ctx, id, true).catch(() => undefined);
    throw error;
  }
  if (args.options['detach'] === true) {
    monitor.unref();
    return 0;
  }
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => {
    if (monitor.exitCode !== null || monitor.signalCode !== null) resolve([monitor.exitCode, monitor.signalCode]);
    else monitor.once('exit', (c, s) => resolve([c, s]));
  });
  if (args.options['keep'] !== true) await remove(ctx, { ...args, options: { force: true } }).catch(() => undefined);
  if (signal !== null) {
    const { constants } = await import('node:os');
    return 128 + (constants.signals[signal] ?? 0);
  }
  return code ?? 1;
}

/** `ps [--format table|json] ID`: the container's host processes, i.e. its monitor (its own processes run in the VM). */
export async function ps(ctx: Context, args: RuntimeArgs): Promise<void> {
  const id = checkId(args.positionals[0]);
  const format = str(args.options, 'format') ?? 'table';
  if (format !== 'table' && format !== 'json') throw new RuntimeError(`invalid format option`);
  const record = await ctx.root.read(id);
  const status = currentStatus(record);
  const pids = status === 'stopped' || !record.monitor ? [] : [record.monitor.pid];
  if (format === 'json') {
    process.stdout.write(`${JSON.stringify(pids)}\n`);
    return;
  }
  if (pids.length === 0) {
    process.stdout.write('UID          PID    PPID  C STIME TTY          TIME CMD\n');
    return;
  }
  await new Promise<void>((resolve, reject) => {
    const child = spawn('ps', ['-f', '-p', pids.join(',')], { stdio: ['ignore', 'inherit', 'inherit'] });
    child.on('error', reject);
    child.on('close', () => resolve());
  });
}

/** `spec`: a default config.json (runc's: `sh` on a terminal). */
export async function specCommand(args: RuntimeArgs): Promise<void> {
  if (args.options['rootless'] === true) throw new RuntimeError('--rootless: vmpod-runtime runs VMs as root only');
  const { defaultSpec } = await import('../container/spec.js');
  const file = path.join(path.resolve(str(args.options, 'bundle') ?? process.cwd()), 'config.json');
  const spec = defaultSpec({ args: ['sh'], hostname: 'vmpod', terminal: true });
  try {
    await fsp.writeFile(file, `${JSON.stringify(spec, null, '\t')}\n`, { flag: 'wx', mode: 0o644 });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw new RuntimeError(`File ${file} exists. Remove it first`);
    throw error;
  }
}
