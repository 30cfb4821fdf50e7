/**
 * vmpod-runtime driven for real, as its callers drive it (the built CLI, dist/runtime/main.js,
 * or $VMPOD_RUNTIME): a subreaper (helpers/runtime-reaper.py, standing in for conmon or
 * containerd's shim) runs `create` with stdio of its own and waits for the pid of the pid file.
 * One VM of its own for the lifecycle; one shared VM (the io.vmpod.sandbox annotation) for kill,
 * exec, delete --force and the console socket. Errors exit 1 with a JSON line in --log.
 */
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import fsSync from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deleteAllAndCheck, processesMentioning, runcSpecBundle, skipReason, until } from './sandbox/fixture.js';
import { VMPOD_RUNTIME_PATH } from './helpers/oci-runtimes.js';

const REAPER = path.resolve('test/privileged/helpers/runtime-reaper.py');
const skip = skipReason ?? (fsSync.existsSync(VMPOD_RUNTIME_PATH) ? undefined : `no ${VMPOD_RUNTIME_PATH} (npx tsc -p tsconfig.json)`);

let dir = '';
let root = '';
let logFile = '';
const shared = `vt-shared-${process.pid}`;

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs vmpod-runtime with this file's --root and a JSON --log. */
function rt(args: string[], input?: string): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = execFile(process.execPath, [VMPOD_RUNTIME_PATH, '--root', root, '--log', logFile, '--log-format', 'json', ...args], { encoding: 'utf8' }, (error, stdout, stderr) => {
      const code = error ? ((error as { code?: unknown }).code as number | null) : 0;
      if (error && typeof (error as { code?: unknown }).code !== 'number') reject(error);
      else resolve({ code, stdout, stderr });
    });
    if (input !== undefined) child.stdin!.end(input);
  });
}

async function state(id: string): Promise<{ status: string; pid: number; id: string; bundle: string; annotations?: Record<string, string> }> {
  const r = await rt(['state', id]);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout);
}

/** The last line of the --log file, parsed. */
async function lastLogLine(): Promise<{ level: string; msg: string; time: string }> {
  const lines = (await fs.readFile(logFile, 'utf8')).trim().split('\n');
  return JSON.parse(lines[lines.length - 1]!);
}

interface Reaped {
  /** The command's exit code (and, with a console socket, the name sent with the fd). */
  returned: Promise<{ rc: number; name: string | null }>;
  /** How the process of the pid file ended. */
  ended: Promise<{ exit: number | null; signal: number | null; console?: string }>;
  stdout: string;
  stderr: string;
}

/** Runs `args` (create or exec --detach) under the subreaper, which then waits for the pid file's process. */
function reaped(name: string, args: string[], extra: { stdin?: string; pidFile: string; console?: string; start?: string } ): Reaped {
  const stdout = path.join(dir, `${name}.out`);
  const stderr = path.join(dir, `${name}.err`);
  const config = {
    argv: [process.execPath, VMPOD_RUNTIME_PATH, '--root', root, '--log', logFile, '--log-format', 'json', ...args],
    pidFile: extra.pidFile, stdout, stderr,
    ...(extra.stdin === undefined ? {} : { stdin: extra.stdin }),
    ...(extra.console === undefined ? {} : { console: extra.console }),
    ...(extra.start === undefined ? {} : { start: [process.execPath, VMPOD_RUNTIME_PATH, '--root', root, 'start', extra.start] }),
  };
  const child = spawn('python3', [REAPER, JSON.stringify(config)], { stdio: ['ignore', 'pipe', 'inherit'] });
  let text = '';
  const lines: string[] = [];
  const waiters: ((line: string) => void)[] = [];
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    text += d;
    let nl;
    while ((nl = text.indexOf('\n')) >= 0) {
      const line = text.slice(0, nl);
      text = text.slice(nl + 1);
      const waiter = waiters.shift();
      if (waiter) waiter(line);
      else lines.push(line);
    }
  });
  const next = (): Promise<string> =>
    lines.length > 0 ? Promise.resolve(lines.shift()!) : new Promise((resolve, reject) => {
      waiters.push(resolve);
      child.once('close', (code) => reject(new Error(`the reaper exited (${code}) early`)));
    });
  const returned = next().then((l) => JSON.parse(l));
  const ended = returned.then(() => next()).then((l) => JSON.parse(l));
  ended.catch(() => undefined);
  return { returned, ended, stdout, stderr };
}

async function bundle(name: string, args: string[], edit: (spec: any) => void = () => undefined): Promise<string> {
  return runcSpecBundle(path.join(dir, name), (spec) => {
    spec.process.args = args;
    spec.process.terminal = false;
    edit(spec);
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe.skipIf(skip)('vmpod-runtime, the built CLI', () => {
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vt-rt-'));
    root = path.join(dir, 'root');
    logFile = path.join(dir, 'log.json');
  });
  afterAll(async () => {
    // Whatever a failed test left: every container deleted by force, then nothing of the VMs may be left.
    for (const id of await fs.readdir(path.join(root, 'containers')).catch(() => [])) await rt(['delete', '--force', id]);
    await deleteAllAndCheck(path.join(root, 'vmpod'));
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('create, state, start, the output on the fds given to create, exit, stopped with the monitor\'s exit code, delete', async () => {
    const b = await bundle('life', ['sh', '-c', 'read line; echo "out:$line"; echo err >&2; exit 7']);
    const pidFile = path.join(dir, 'life.pid');
    const run = reaped('life', ['create', '--bundle', b, '--pid-file', pidFile, 'life'], { stdin: 'hello\n', pidFile });
    expect((await run.returned).rc).toBe(0);
    const pid = Number(await fs.readFile(pidFile, 'utf8'));
    expect(alive(pid)).toBe(true);
    const created = await state('life');
    expect(created).toMatchObject({ id: 'life', status: 'created', pid, bundle: b });
    expect((await rt(['start', 'life'])).code).toBe(0);
    expect(await run.ended).toEqual({ exit: 7, signal: null });
    expect(await fs.readFile(run.stdout, 'utf8')).toBe('out:hello\n');
    expect(await fs.readFile(run.stderr, 'utf8')).toBe('err\n');
    expect(await state('life')).toMatchObject({ status: 'stopped', pid: 0 });
    const again = await rt(['start', 'life']);
    expect(again.code).toBe(1);
    expect(await lastLogLine()).toMatchObject({ level: 'error', msg: 'cannot start a container that has stopped' });
    expect((await rt(['delete', 'life'])).code).toBe(0);
    expect(await fs.readdir(path.join(root, 'vmpod', 'sandboxes'))).not.toContain('life');
    const gone = await rt(['state', 'life']);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toBe('container does not exist\n');
    expect(await lastLogLine()).toMatchObject({ level: 'error', msg: 'container does not exist' });
  });

  it('containers naming one sandbox share its VM: exec, pause/resume/update, kill by name and by number, delete --force, the console socket; the VM goes with the last', async () => {
    const annotate = (spec: any): void => void (spec.annotations = { 'io.vmpod.sandbox': shared });
    const trap = await bundle('trap', ['sh', '-c', 'trap "echo got-term; exit 3" TERM; echo ready; while true; do sleep 0.2; done'], annotate);
    const sleeper = await bundle('sleeper', ['sleep', '1000'], annotate);
    const trapRun = reaped('trap', ['create', '--bundle', trap, '--pid-file', path.join(dir, 'trap.pid'), 'trap'], { pidFile: path.join(dir, 'trap.pid') });
    expect((await trapRun.returned).rc).toBe(0);
    const sleepRun = reaped('sleeper', ['create', '--bundle', sleeper, '--pid-file', path.join(dir, 'sleeper.pid'), 'sleeper'], { pidFile: path.join(dir, 'sleeper.pid') });
    expect((await sleepRun.returned).rc).toBe(0);
    // One VM for both.
    expect(await fs.readdir(path.join(root, 'vmpod', 'sandboxes'))).toEqual([shared]);
    expect((await state('trap')).annotations).toEqual({ 'io.vmpod.sandbox': shared });
    for (const id of ['trap', 'sleeper']) expect((await rt(['start', id])).code).toBe(0);
    expect((await state('sleeper')).status).toBe('running');

    // exec: with arguments (its exit code and output), with a Process file, detached.
    const withArgs = await rt(['exec', 'sleeper', 'sh', '-c', 'echo exec:$(cat /proc/1/comm); exit 4']);
    expect(withArgs).toMatchObject({ code: 4, stdout: 'exec:sleep\n' });
    // No network namespace path in the spec: the VM has no NIC.
    expect((await rt(['exec', 'sleeper', 'sh', '-c', 'ls /sys/class/net'])).stdout).toBe('lo\n');
    const processFile = path.join(dir, 'process.json');
    await fs.writeFile(processFile, JSON.stringify({ args: ['sh', '-c', 'echo "$FOO in $(pwd)"; exit 5'], env: ['PATH=/bin', 'FOO=bar'], cwd: '/tmp', terminal: false }));
    expect(await rt(['exec', '--process', processFile, 'sleeper'])).toMatchObject({ code: 5, stdout: 'bar in /tmp\n' });
    const execPid = path.join(dir, 'exec.pid');
    const detached = reaped('exec', ['exec', '--detach', '--pid-file', execPid, '--process', processFile, 'sleeper'], { pidFile: execPid });
    expect((await detached.returned).rc).toBe(0);
    expect(await detached.ended).toEqual({ exit: 5, signal: null });
    expect(await fs.readFile(detached.stdout, 'utf8')).toBe('bar in /tmp\n');

    // pause and resume (the container's cgroup frozen in the guest), update (its limits there).
    expect((await rt(['pause', 'sleeper'])).code).toBe(0);
    expect((await state('sleeper')).status).toBe('paused');
    expect((await rt(['exec', 'sleeper', 'true'])).code).toBe(1);
    expect((await lastLogLine()).msg).toBe('cannot exec in a paused container');
    expect((await rt(['resume', 'sleeper'])).code).toBe(0);
    expect((await state('sleeper')).status).toBe('running');
    const resources = { memory: { limit: 268435456, swappiness: null, kernel: 0 }, cpu: { shares: 0, quota: 50000, period: 100000 }, pids: { limit: 64 }, devices: [] };
    expect((await rt(['update', '--resources', '-', 'sleeper'], JSON.stringify(resources))).code).toBe(0);
    expect((await rt(['update', '--pids-limit', '32', 'sleeper'])).code).toBe(0);
    const limits = await rt(['exec', 'sleeper', 'sh', '-c', 'cd /sys/fs/cgroup/vmpod/sleeper && cat memory.max pids.max cpu.max']);
    expect(limits).toMatchObject({ code: 0, stdout: '268435456\n32\n50000 100000\n' });

    // kill by name: the trap's exit code; by number (a created container): the monitor dies of that signal.
    await until('the trap to be set', async () => (await fs.readFile(trapRun.stdout, 'utf8')).includes('ready'));
    expect((await rt(['kill', 'trap', 'TERM'])).code).toBe(0);
    expect(await trapRun.ended).toEqual({ exit: 3, signal: null });
    expect(await fs.readFile(trapRun.stdout, 'utf8')).toBe('ready\ngot-term\n');
    const killed = reaped('killed', ['create', '--bundle', sleeper, '--pid-file', path.join(dir, 'killed.pid'), 'killed'], { pidFile: path.join(dir, 'killed.pid') });
    expect((await killed.returned).rc).toBe(0);
    // Killed before it was started (what a caller's cleanup does): stopped, its monitor gone.
    expect((await rt(['kill', 'killed', '9'])).code).toBe(0);
    expect(await killed.ended).toEqual({ exit: null, signal: 9 });
    expect(await state('killed')).toMatchObject({ status: 'stopped', pid: 0 });
    expect((await rt(['start', 'killed'])).code).toBe(1);
    expect((await lastLogLine()).msg).toBe('cannot start a container that has stopped');
    const bad = await rt(['kill', 'sleeper', 'NOPE']);
    expect(bad.code).toBe(1);
    expect(await lastLogLine()).toMatchObject({ level: 'error', msg: 'unknown signal "NOPE"' });

    // The console socket: a terminal container in the same VM.
    const tty = await bundle('tty', ['sh'], (spec) => {
      annotate(spec);
      spec.process.terminal = true;
    });
    const socket = path.join(dir, 'console.sock');
    const ttyPid = path.join(dir, 'tty.pid');
    const console = reaped('tty', ['create', '--bundle', tty, '--console-socket', socket, '--pid-file', ttyPid, 'tty'], { pidFile: ttyPid, console: socket, start: 'tty', stdin: 'stty size; echo $((6*7)); exit 6\n' });
    const sent = await console.returned;
    expect(sent.rc).toBe(0);
    expect(sent.name).toMatch(/^\/dev\/pts\/[0-9]+$/u);
    const screen = await console.ended;
    expect(screen).toMatchObject({ exit: 6, signal: null });
    expect(screen.console).toContain('33 77\r\n42\r\n');

    // exec --tty --console-socket --detach: the exec'd process on a terminal of its own, resized once it runs.
    const execSocket = path.join(dir, 'exec-console.sock');
    const execTtyPid = path.join(dir, 'exec-tty.pid');
    const execTty = reaped('exec-tty', ['exec', '--tty', '--detach', '--console-socket', execSocket, '--pid-file', execTtyPid, 'sleeper', 'sh', '-c', 'sleep 2; stty size; exit 2'], { pidFile: execTtyPid, console: execSocket });
    expect((await execTty.returned).rc).toBe(0);
    const execScreen = await execTty.ended;
    expect(execScreen).toMatchObject({ exit: 2, signal: null });
    expect(execScreen.console).toContain('33 77\r\n');

    // delete refuses a running container, --force kills it; the VM stays while a container names it.
    const refused = await rt(['delete', 'sleeper']);
    expect(refused.code).toBe(1);
    expect(await lastLogLine()).toMatchObject({ msg: 'cannot delete container sleeper that is not stopped: running' });
    for (const id of ['trap', 'killed', 'tty']) expect((await rt(['delete', id])).code).toBe(0);
    expect(await fs.readdir(path.join(root, 'vmpod', 'sandboxes'))).toEqual([shared]);
    expect((await rt(['delete', '--force', 'sleeper'])).code).toBe(0);
    expect(await sleepRun.ended).toEqual({ exit: null, signal: 9 });
    expect(await fs.readdir(path.join(root, 'vmpod', 'sandboxes'))).toEqual([]);
    expect((await rt(['list', '--format', 'json'])).stdout).toBe('[]\n');
  });

  it('the spec\'s network namespace gives the VM its NICs: the container has the interface\'s address and answers on it', async () => {
    const tag = Math.floor(Math.random() * 0x10000).toString(16).padStart(4, '0');
    const netns = `vt-rtns-${tag}`;
    const [hostEnd, nsEnd] = [`vt${tag}h`, `vt${tag}n`];
    const ip = (...args: string[]): Promise<unknown> => new Promise((resolve, reject) => execFile('ip', args, (e) => (e ? reject(e) : resolve(undefined))));
    await ip('netns', 'add', netns);
    try {
      await ip('link', 'add', hostEnd, 'type', 'veth', 'peer', 'name', nsEnd, 'netns', netns);
      await ip('addr', 'add', '10.231.7.1/24', 'dev', hostEnd);
      await ip('link', 'set', hostEnd, 'up');
      await ip('-n', netns, 'addr', 'add', '10.231.7.2/24', 'dev', nsEnd);
      await ip('-n', netns, 'link', 'set', nsEnd, 'up');
      const b = await bundle('net', ['sleep', '1000'], (spec) => {
        const ns = spec.linux.namespaces.find((n: { type: string }) => n.type === 'network');
        ns.path = `/run/netns/${netns}`;
        // The guest binds resolv.conf and hosts onto the rootfs: runc spec's read-only root has no mount points for them.
        spec.root.readonly = false;
      });
      const pidFile = path.join(dir, 'net.pid');
      const run = reaped('net', ['create', '--bundle', b, '--pid-file', pidFile, 'net'], { pidFile });
      expect((await run.returned).rc).toBe(0);
      expect((await rt(['start', 'net'])).code).toBe(0);
      const addr = await rt(['exec', 'net', 'ip', '-o', '-4', 'addr', 'show', 'dev', nsEnd]);
      expect(addr.code, addr.stderr).toBe(0);
      expect(addr.stdout).toContain('inet 10.231.7.2/24');
      // The namespace's end of the veth now carries the VM's traffic: the guest answers.
      const ping = await new Promise<number | null>((resolve) => execFile('busybox', ['ping', '-c', '3', '-W', '10', '10.231.7.2'], (e) => resolve(e ? ((e as { code?: number }).code ?? 1) : 0)));
      expect(ping).toBe(0);
      expect((await rt(['delete', '--force', 'net'])).code).toBe(0);
      expect(await run.ended).toEqual({ exit: null, signal: 9 });
      // Adopted, not made: the namespace and its interface are left as they were.
      expect(fsSync.existsSync(`/run/netns/${netns}`)).toBe(true);
      await ip('-n', netns, 'link', 'show', nsEnd);
    } finally {
      await ip('link', 'del', hostEnd).catch(() => undefined);
      await ip('netns', 'del', netns).catch(() => undefined);
    }
  });

  it('a monitor killed while it boots the VM fails create and leaves nothing; one killed later leaves a stopped container that delete finishes', async () => {
    const b = await bundle('crash', ['sleep', '1000']);
    const creating = rt(['create', '--bundle', b, 'crash1']);
    let monitor = 0;
    await until('the monitor to be booting the VM', async () => {
      if (!fsSync.existsSync(path.join(root, 'vmpod', 'sandboxes', 'crash1'))) return false;
      monitor = (await processesMentioning(`"id":"crash1"`))[0] ?? 0;
      return monitor > 0;
    });
    process.kill(monitor, 'SIGKILL');
    const failed = await creating;
    expect(failed.code).toBe(1);
    expect((await lastLogLine()).msg).toMatch(/^vmpod-runtime create failed: the container's monitor exited \(SIGKILL\) before it was ready$/u);
    expect(await fs.readdir(path.join(root, 'containers'))).not.toContain('crash1');
    expect(await fs.readdir(path.join(root, 'vmpod', 'sandboxes'))).not.toContain('crash1');

    const pidFile = path.join(dir, 'crash2.pid');
    const run = reaped('crash2', ['create', '--bundle', b, '--pid-file', pidFile, 'crash2'], { pidFile });
    expect((await run.returned).rc).toBe(0);
    process.kill(Number(await fs.readFile(pidFile, 'utf8')), 'SIGKILL');
    expect(await run.ended).toEqual({ exit: null, signal: 9 });
    expect(await state('crash2')).toMatchObject({ status: 'stopped', pid: 0 });
    expect(await fs.readdir(path.join(root, 'vmpod', 'sandboxes'))).toContain('crash2');
    expect((await rt(['delete', 'crash2'])).code).toBe(0);
    expect(await fs.readdir(path.join(root, 'vmpod', 'sandboxes'))).not.toContain('crash2');
    expect(await processesMentioning('crash2')).toEqual([]);
  });

  it('errors exit 1 with runc\'s JSON line in --log: unknown id, duplicate id, bad bundle, a terminal without a console socket; nothing left', async () => {
    for (const args of [['state', 'nope'], ['start', 'nope'], ['kill', 'nope'], ['delete', 'nope'], ['exec', 'nope', 'true']]) {
      const r = await rt(args);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stderr).toBe('container does not exist\n');
      expect(await lastLogLine()).toMatchObject({ level: 'error', msg: 'container does not exist' });
    }
    const empty = path.join(dir, 'empty');
    await fs.mkdir(empty, { recursive: true });
    const noConfig = await rt(['create', '--bundle', empty, 'bad']);
    expect(noConfig.code).toBe(1);
    const line = await lastLogLine();
    expect(line.level).toBe('error');
    expect(line.msg).toMatch(/^vmpod-runtime create failed: bundle .*empty: config.json cannot be read/u);
    expect(line.time).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/u);
    const tty = await bundle('tty-no-socket', ['sh'], (spec) => void (spec.process.terminal = true));
    const noSocket = await rt(['create', '--bundle', tty, 'bad']);
    expect(noSocket.code).toBe(1);
    expect((await lastLogLine()).msg).toBe('vmpod-runtime create failed: cannot allocate tty if vmpod-runtime will detach without setting console socket');
    expect(await fs.readdir(path.join(root, 'containers')).catch(() => [])).toEqual([]);

    // A duplicate id: refused, the first one untouched.
    const b = await bundle('dup', ['true']);
    await fs.mkdir(path.join(root, 'containers', 'dup'), { recursive: true });
    await fs.writeFile(path.join(root, 'containers', 'dup', 'state.json'), JSON.stringify({ format: 1, id: 'dup', bundle: b, rootfs: `${b}/rootfs`, created: new Date().toISOString(), annotations: {}, sandbox: 'dup', status: 'stopped', terminal: false }));
    const dup = await rt(['create', '--bundle', b, 'dup']);
    expect(dup.code).toBe(1);
    expect((await lastLogLine()).msg).toBe('vmpod-runtime create failed: container with given ID already exists');
    expect((await state('dup')).status).toBe('stopped');
    expect((await rt(['delete', 'dup'])).code).toBe(0);
    expect(await fs.readdir(path.join(root, 'containers'))).toEqual([]);
  });
});
