/**
 * vmpod-runtime without a VM: its command line (runc's), the OCI state it prints from a record,
 * runc's --log lines, signals, the sandbox a container's annotations choose, hooks it refuses,
 * and that `state` loads neither the addon nor the sandbox code (its static imports).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { parseRuntimeArgs, helpText } from '../../src/runtime/args.js';
import { RuntimeError, logLine, logTime, reportFailure, writeLog } from '../../src/runtime/log.js';
import { parseSignal, signalName } from '../../src/runtime/signals.js';
import { RuntimeRoot, checkId, currentStatus, ociState, selfIdentity, type RuntimeRecord } from '../../src/runtime/state.js';
import { librarySandboxId, networkNamespace, sandboxName, vmSize } from '../../src/runtime/sandbox-choice.js';
import { runHooks, runHooksWarning, specHooks } from '../../src/runtime/hooks.js';
import { features } from '../../src/runtime/features.js';
import { execProcess } from '../../src/runtime/commands.js';
import { knownResources } from '../../src/runtime/resources.js';

describe('vmpod-runtime command line', () => {
  it('takes global options before the command, and create\'s options in runc\'s spellings', () => {
    const a = parseRuntimeArgs(['--root', '/r', '--log=/l', '--log-format', 'json', '--systemd-cgroup', 'create', '-b', '/b', '--pid-file=/p', '--console-socket', '/s', '--no-pivot', 'c1']);
    expect(a.global).toEqual({ root: '/r', log: '/l', 'log-format': 'json', 'systemd-cgroup': true });
    expect(a.command?.name).toBe('create');
    expect(a.options).toEqual({ bundle: '/b', 'pid-file': '/p', 'console-socket': '/s', 'no-pivot': true });
    expect(a.positionals).toEqual(['c1']);
  });
  it('accepts single-dash long flags and boolean =true/=false, as Go\'s flag package does', () => {
    expect(parseRuntimeArgs(['-root', '/r', 'delete', '-force=true', 'c']).options).toEqual({ force: true });
    expect(parseRuntimeArgs(['delete', '--force=false', 'c']).options).toEqual({});
    expect(() => parseRuntimeArgs(['delete', '--force=maybe', 'c'])).toThrow('invalid boolean value "maybe" for -force');
  });
  it('keeps everything after exec\'s container id as the command', () => {
    const a = parseRuntimeArgs(['exec', '-t', '--env', 'A=1', '-e', 'B=2', 'c', 'sh', '-c', 'ls -l', '--tty']);
    expect(a.options).toEqual({ tty: true, env: ['A=1', 'B=2'] });
    expect(a.positionals).toEqual(['c']);
    expect(a.rest).toEqual(['sh', '-c', 'ls -l', '--tty']);
    expect(parseRuntimeArgs(['exec', 'c', '--', 'ls']).rest).toEqual(['ls']);
  });
  it('takes kill\'s optional signal, and --all before or after the positionals', () => {
    expect(parseRuntimeArgs(['kill', '--all', 'c', 'KILL'])).toMatchObject({ options: { all: true }, positionals: ['c', 'KILL'] });
    expect(parseRuntimeArgs(['kill', 'c'])).toMatchObject({ positionals: ['c'] });
    expect(parseRuntimeArgs(['kill', 'c', '9', '-a'])).toMatchObject({ options: { all: true }, positionals: ['c', '9'] });
  });
  it('refuses unknown flags, missing values, missing and extra arguments, unknown commands', () => {
    expect(() => parseRuntimeArgs(['create', '--bogus', 'c'])).toThrow('flag provided but not defined: -bogus');
    expect(() => parseRuntimeArgs(['create', 'c', '--bundle'])).toThrow('flag needs an argument: -bundle');
    expect(() => parseRuntimeArgs(['state'])).toThrow('"state" requires a minimum of 1 argument');
    expect(() => parseRuntimeArgs(['state', 'a', 'b'])).toThrow('"state" requires a maximum of 1 argument');
    expect(() => parseRuntimeArgs(['kill', 'a', 'b', 'c'])).toThrow('"kill" requires a maximum of 2 arguments');
    expect(() => parseRuntimeArgs(['frobnicate'])).toThrow(RuntimeError);
    expect(() => parseRuntimeArgs(['--bogus', 'state', 'x'])).toThrow('flag provided but not defined: -bogus');
  });
  it('gives help for --help, globally and per command, without requiring arguments', () => {
    expect(parseRuntimeArgs(['state', '--help']).options['help']).toBe(true);
    expect(helpText()).toContain('create');
    const create = parseRuntimeArgs(['create', '-h']).command!;
    expect(helpText(create)).toContain('--console-socket');
  });
  it('checks container ids as vmpod takes them', () => {
    expect(checkId('a-b_c.1')).toBe('a-b_c.1');
    expect(checkId('f'.repeat(64))).toHaveLength(64);
    expect(() => checkId('')).toThrow('container id cannot be empty');
    expect(() => checkId(undefined)).toThrow('container id cannot be empty');
    for (const bad of ['a/b', '..', 'a..b', '-x', 'f'.repeat(65), 'a b']) expect(() => checkId(bad)).toThrow(`invalid container id format: ${bad}`);
  });
});

describe('signals', () => {
  it('takes names with or without SIG, any case, and numbers', () => {
    expect(parseSignal('KILL')).toEqual({ name: 'SIGKILL', number: 9 });
    expect(parseSignal('SIGKILL')).toEqual({ name: 'SIGKILL', number: 9 });
    expect(parseSignal('term')).toEqual({ name: 'SIGTERM', number: 15 });
    expect(parseSignal('9')).toEqual({ name: 'SIGKILL', number: 9 });
    expect(parseSignal('10').number).toBe(10);
    expect(parseSignal('40').number).toBe(40);
    expect(signalName(15)).toBe('SIGTERM');
  });
  it('refuses what is no signal, with runc\'s message', () => {
    for (const bad of ['FOO', 'SIGFOO', '0', '65', '-9', '9x', '']) expect(() => parseSignal(bad)).toThrow(`unknown signal "${bad}"`);
  });
});

describe('the --log file', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-rtlog-'));
  });
  afterEach(() => {
    fs.rmSync(dir, { recursive: true, force: true });
    vi.restoreAllMocks();
  });
  it('writes logrus\'s JSON: level, msg, time in that order, time in RFC 3339 to the second', () => {
    const line = logLine('error', 'container does not exist', 'json', new Date('2026-12-08T00:06:27.293Z'));
    expect(line).toBe('{"level":"error","msg":"container does not exist","time":"2026-12-08T00:06:27Z"}');
    expect(logTime(new Date('2026-01-02T03:04:05.999Z'))).toBe('2026-01-02T03:04:05Z');
  });
  it('writes logrus\'s text, quoting values that need it', () => {
    expect(logLine('error', 'container does not exist', 'text', new Date('2026-12-08T00:06:27Z'))).toBe('time="2026-12-08T00:06:27Z" level=error msg="container does not exist"');
    expect(logLine('error', 'plain', 'text', new Date('2026-12-08T00:06:27Z'))).toBe('time="2026-12-08T00:06:27Z" level=error msg=plain');
  });
  it('appends one line per failure to the file and the bare message to stderr (runc\'s fatal)', () => {
    const file = path.join(dir, 'log.json');
    fs.writeFileSync(file, '{"level":"info","msg":"before","time":"x"}\n');
    const stderr = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    reportFailure({ file, format: 'json', debug: false }, 'cannot start a container that has stopped');
    const lines = fs.readFileSync(file, 'utf8').trim().split('\n');
    expect(lines).toHaveLength(2);
    expect(JSON.parse(lines[1]!)).toMatchObject({ level: 'error', msg: 'cannot start a container that has stopped' });
    expect(stderr).toHaveBeenCalledWith('cannot start a container that has stopped\n');
  });
  it('without --log, writes the line to stderr only; debug lines only with --debug', () => {
    const stderr = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    reportFailure({ format: 'json', debug: false }, 'boom');
    expect(stderr).toHaveBeenCalledTimes(1);
    expect(JSON.parse(String(stderr.mock.calls[0]![0]))).toMatchObject({ level: 'error', msg: 'boom' });
    writeLog({ format: 'json', debug: false }, 'debug', 'hidden');
    expect(stderr).toHaveBeenCalledTimes(1);
    writeLog({ format: 'json', debug: true }, 'debug', 'shown');
    expect(stderr).toHaveBeenCalledTimes(2);
  });
});

describe('the OCI state', () => {
  const base: RuntimeRecord = {
    format: 1, id: 'c1', bundle: '/b', rootfs: '/b/rootfs', created: '2026-12-08T00:00:00.000Z', annotations: {}, sandbox: 'c1', status: 'running', terminal: false,
  };
  const dead = { pid: 999_999_999, startTime: 1 };
  it('reports what the live monitor recorded, with the monitor\'s pid, and runc\'s extra fields', () => {
    const me = selfIdentity();
    expect(ociState({ ...base, monitor: me })).toEqual({
      ociVersion: '1.0.2', id: 'c1', pid: process.pid, status: 'running', bundle: '/b', rootfs: '/b/rootfs', created: '2026-12-08T00:00:00.000Z', owner: '',
    });
    expect(ociState({ ...base, status: 'created', monitor: me }).status).toBe('created');
    expect(ociState({ ...base, status: 'paused', monitor: me }).status).toBe('paused');
    expect(ociState({ ...base, annotations: { a: 'b' }, monitor: me }).annotations).toEqual({ a: 'b' });
  });
  it('is stopped with pid 0 once the monitor is gone, or its pid belongs to another process', () => {
    expect(ociState({ ...base, monitor: dead })).toMatchObject({ status: 'stopped', pid: 0 });
    expect(ociState({ ...base, monitor: { pid: process.pid, startTime: selfIdentity().startTime + 1 } })).toMatchObject({ status: 'stopped', pid: 0 });
    expect(ociState({ ...base, status: 'stopped', monitor: selfIdentity() })).toMatchObject({ status: 'stopped', pid: 0 });
  });
  it('is creating while the create or the monitor lives, stopped after a crash there', () => {
    expect(currentStatus({ ...base, status: 'creating', creator: selfIdentity() })).toBe('creating');
    expect(currentStatus({ ...base, status: 'creating', creator: dead })).toBe('stopped');
    expect(currentStatus({ ...base, status: 'creating' })).toBe('stopped');
  });
  it('reads and writes records; a missing one is runc\'s "container does not exist"', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-rtroot-'));
    try {
      const root = new RuntimeRoot(dir);
      await expect(root.read('c1')).rejects.toThrow('container does not exist');
      fs.mkdirSync(root.containerDir('c1'), { recursive: true });
      await root.write(base);
      expect(await root.read('c1')).toEqual(base);
      expect(await root.ids()).toEqual(['c1']);
      fs.writeFileSync(root.recordFile('c1'), '{');
      await expect(root.read('c1')).rejects.toThrow('unreadable');
      expect(path.basename(root.socket('f'.repeat(64)))).toHaveLength(21);
      expect(root.socket('a')).not.toBe(root.socket('b'));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('sandbox choice', () => {
  it('gives each container a VM of its own unless an annotation names a sandbox', () => {
    expect(sandboxName('c1', {})).toBe('c1');
    expect(sandboxName('c1', { 'io.vmpod.sandbox': 'pod' })).toBe('pod');
    expect(() => sandboxName('c1', { 'io.vmpod.sandbox': '' })).toThrow('is empty');
  });
  it('follows containerd\'s and CRI-O\'s pod annotations', () => {
    expect(sandboxName('p', { 'io.kubernetes.cri.container-type': 'sandbox', 'io.kubernetes.cri.sandbox-id': 'p' })).toBe('p');
    expect(sandboxName('c', { 'io.kubernetes.cri.container-type': 'container', 'io.kubernetes.cri.sandbox-id': 'p' })).toBe('p');
    expect(sandboxName('c', { 'io.kubernetes.cri-o.ContainerType': 'container', 'io.kubernetes.cri-o.SandboxID': 'q' })).toBe('q');
    expect(sandboxName('q', { 'io.kubernetes.cri-o.ContainerType': 'sandbox' })).toBe('q');
    expect(() => sandboxName('c', { 'io.kubernetes.cri.container-type': 'container' })).toThrow('io.kubernetes.cri.sandbox-id is missing');
    expect(sandboxName('c', { 'io.vmpod.sandbox': 'mine', 'io.kubernetes.cri.container-type': 'container', 'io.kubernetes.cri.sandbox-id': 'p' })).toBe('mine');
  });
  it('maps a name vmpod cannot take to a stable digest', () => {
    expect(librarySandboxId('pod-1')).toBe('pod-1');
    const long = librarySandboxId('x'.repeat(65));
    expect(long).toMatch(/^s-[0-9a-f]{32}$/u);
    expect(librarySandboxId('x'.repeat(65))).toBe(long);
    expect(librarySandboxId('a/b')).not.toBe(librarySandboxId('a:b'));
  });
  it('takes the VM\'s NICs from the spec\'s network namespace path, and its size from annotations', () => {
    expect(networkNamespace({ linux: { namespaces: [{ type: 'pid' }, { type: 'network', path: '/run/netns/x' }] } })).toBe('/run/netns/x');
    expect(networkNamespace({ linux: { namespaces: [{ type: 'network' }] } })).toBeUndefined();
    expect(networkNamespace({})).toBeUndefined();
    expect(vmSize({ 'io.vmpod.sandbox.cpus': '2', 'io.vmpod.sandbox.memory-mib': '512' })).toEqual({ cpus: 2, memoryMiB: 512 });
    expect(vmSize({})).toEqual({});
    expect(() => vmSize({ 'io.vmpod.sandbox.cpus': '0' })).toThrow('is not a positive integer');
  });
});

describe('hooks and features', () => {
  it('refuses hooks that would run inside the VM, checks the others', () => {
    expect(() => specHooks({ hooks: { createContainer: [{ path: '/bin/true' }] } })).toThrow('createContainer hooks are not supported');
    expect(() => specHooks({ hooks: { startContainer: [{ path: '/bin/true' }] } })).toThrow('startContainer hooks are not supported');
    expect(() => specHooks({ hooks: { prestart: [{ path: 'relative' }] } })).toThrow('hooks.prestart[0]: "path" must be an absolute path');
    expect(() => specHooks({ hooks: { poststop: [{ path: '/x', timeout: 0 }] } })).toThrow('"timeout" must be a positive integer');
    expect(specHooks({ hooks: { createContainer: [], poststart: [{ path: '/bin/true', args: ['true'] }] } }).poststart).toEqual([{ path: '/bin/true', args: ['true'] }]);
  });
  it('says which hooks and namespaces it has', () => {
    const f = features() as { hooks: string[]; linux: { namespaces: string[]; cgroup: Record<string, boolean> } };
    expect(f.hooks).not.toContain('createContainer');
    expect(f.hooks).toContain('poststop');
    expect(f.linux.namespaces).not.toContain('user');
    expect(f.linux.cgroup.systemd).toBe(false);
  });
});

describe('exec\'s process', () => {
  it('comes from the arguments and flags', async () => {
    const a = parseRuntimeArgs(['exec', '-e', 'A=1', '--cwd', '/tmp', '-u', '1000:100', '-g', '5', 'c', 'id', '-u']);
    expect(await execProcess(a)).toEqual({ args: ['id', '-u'], terminal: false, env: ['A=1'], cwd: '/tmp', user: { uid: 1000, gid: 100, additionalGids: [5] } });
    await expect(execProcess(parseRuntimeArgs(['exec', 'c']))).rejects.toThrow('exec args cannot be empty');
    await expect(execProcess(parseRuntimeArgs(['exec', '-u', 'app', 'c', 'x']))).rejects.toThrow('--user app');
  });
  it('comes from a runtime-spec Process file, --tty adding a terminal', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-rtproc-'));
    try {
      const file = path.join(dir, 'p.json');
      fs.writeFileSync(file, JSON.stringify({ args: ['sh'], env: ['PATH=/bin'], cwd: '/', user: { uid: 1, gid: 2 }, terminal: false, capabilities: {} }));
      expect(await execProcess(parseRuntimeArgs(['exec', '-p', file, '-t', 'c']))).toEqual({ args: ['sh'], env: ['PATH=/bin'], cwd: '/', user: { uid: 1, gid: 2 }, terminal: true });
      fs.writeFileSync(file, JSON.stringify({ args: [] }));
      await expect(execProcess(parseRuntimeArgs(['exec', '-p', file, 'c']))).rejects.toThrow('"args" must be a non-empty array');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('start-up cost', () => {
  /** The files `file` imports statically (not `import()`), transitively. */
  function staticImports(file: string, seen = new Set<string>()): Set<string> {
    if (seen.has(file)) return seen;
    seen.add(file);
    const text = fs.readFileSync(file, 'utf8');
    for (const m of text.matchAll(/^import\s+(?!type\b)[^'";]*?from\s+'(\.[^']+)';/gmu)) {
      staticImports(path.resolve(path.dirname(file), m[1]!.replace(/\.js$/u, '.ts')), seen);
    }
    for (const m of text.matchAll(/^import\s+'(\.[^']+)';/gmu)) staticImports(path.resolve(path.dirname(file), m[1]!.replace(/\.js$/u, '.ts')), seen);
    return seen;
  }
  it('main.ts (what state runs) imports neither the addon\'s loader nor the sandbox or container code', () => {
    const files = [...staticImports(path.resolve('src/runtime/main.ts'))].map((f) => path.relative(path.resolve('src'), f));
    expect(files).toContain('runtime/state.ts');
    expect(files.filter((f) => f === 'native.ts' || f.startsWith('sandbox/') || f.startsWith('container/') || f.startsWith('agent/') || f === 'runtime/commands.ts')).toEqual([]);
  });
});

describe('update\'s resources', () => {
  it('keeps what Container.update() sets, drops what runc\'s callers also send and their zeros for "unchanged"', () => {
    expect(knownResources({
      memory: { limit: 268435456, reservation: 0, swap: null, kernel: 0, swappiness: null },
      cpu: { shares: 0, quota: 50000, period: 100000, cpus: '', realtimeRuntime: 0 },
      pids: { limit: 0 },
      blockIO: { weight: 500, weightDevice: [] },
      devices: [{ allow: false, access: 'rwm' }],
      unified: {},
    })).toEqual({ memory: { limit: 268435456 }, cpu: { quota: 50000, period: 100000 }, pids: { limit: 0 }, blockIO: { weight: 500 } });
    expect(knownResources({ memory: null, hugepageLimits: [] })).toEqual({});
  });
});

describe('running hooks', () => {
  const state = { ociVersion: '1.0.2', id: 'c1', pid: 42, status: 'created' as const, bundle: '/b', rootfs: '/b/rootfs', created: 'x', owner: '' };
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-rthook-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));
  const sh = (script: string, extra: object = {}): { path: string; args: string[] } => ({ path: '/bin/sh', args: ['sh', '-c', script], ...extra });

  it('gives each hook the state on stdin, its args and env', async () => {
    await runHooks([sh(`cat > ${dir}/state; echo "$0 $FOO" > ${dir}/argv`, { env: ['FOO=bar'] })], state, 'prestart');
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'state'), 'utf8'))).toEqual(state);
    expect(fs.readFileSync(path.join(dir, 'argv'), 'utf8')).toBe('sh bar\n');
  });
  it('stops at the first failing prestart hook, naming its status and stderr', async () => {
    await expect(runHooks([sh('echo nope >&2; exit 3'), sh(`touch ${dir}/second`)], state, 'prestart')).rejects.toThrow('prestart hook /bin/sh failed (exit status 3): nope');
    expect(fs.existsSync(path.join(dir, 'second'))).toBe(false);
  });
  it('runs every poststart/poststop hook after a failing one, each failure a warning', async () => {
    const warnings: string[] = [];
    await runHooksWarning([sh('exit 4'), sh(`touch ${dir}/second`), sh('exit 5')], state, 'poststop', (e) => warnings.push((e as Error).message));
    expect(fs.existsSync(path.join(dir, 'second'))).toBe(true);
    expect(warnings).toEqual(['poststop hook /bin/sh failed (exit status 4)', 'poststop hook /bin/sh failed (exit status 5)']);
  });
  it('kills a hook at its timeout', async () => {
    await expect(runHooks([sh('sleep 30', { timeout: 1 })], state, 'createRuntime')).rejects.toThrow('createRuntime hook /bin/sh timed out after 1 s');
  });
});
