// The guest agent run on the host as root (--listen unix:...), driven through AgentClient:
// containers from OCI bundles with real namespaces, pivot_root, mounts, users, signals, stdio.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentError } from '../../src/agent/errors.js';
import type { AgentClient } from '../../src/agent/client.js';
import type { MountRequest, OciSpec, StdioRequest } from '../../src/agent/messages.js';
import {
  AGENT_BINARY,
  BUSYBOX,
  RUNC,
  collect,
  haveAgent,
  haveBusybox,
  isRoot,
  makeBusyboxRootfs,
  minimalSpec,
  runcSpec,
  startHostAgent,
  uniqueId,
  type HostAgent,
} from './agent-host.js';

const ready = isRoot && haveAgent && haveBusybox;
const reason = !isRoot ? 'needs root' : !haveAgent ? `no agent binary at ${AGENT_BINARY} (npm run build:native)` : 'busybox-static is not installed';

async function run(
  client: AgentClient,
  id: string,
  request: { config?: OciSpec; bundle?: string; rootfs?: string; overlay?: boolean; stdio?: StdioRequest },
  stdin?: Buffer,
) {
  await client.createContainer({ id, ...request, stdio: { stdin: stdin !== undefined, ...request.stdio } });
  const stdio = await client.openStdio(id, { stdin: stdin !== undefined, stdout: true, stderr: true });
  const out = collect(stdio.stdout);
  const err = collect(stdio.stderr);
  await client.startContainer(id);
  if (stdin) stdio.stdin!.end(stdin);
  const status = await client.wait(id);
  const raw = await out;
  const result = { status, stdout: raw.toString(), stderr: (await err).toString(), raw };
  await client.deleteContainer(id);
  return result;
}

/** Runs a command in the agent's mount namespace (its own since it started: a mount made in ours may not reach it). */
function inAgentMounts(agent: HostAgent, args: string[]): void {
  const r = spawnSync('nsenter', ['-t', String(agent.process.pid), '-m', ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`nsenter ${args.join(' ')}: ${r.stderr}`);
}

describe.skipIf(!ready)(`vmpod-agent on the host (${ready ? 'root' : reason})`, () => {
  let agent: HostAgent;
  let client: AgentClient;

  beforeAll(async () => {
    agent = await startHostAgent();
    client = agent.client;
  });

  afterAll(async () => {
    const code = await agent?.cleanup();
    expect(code).toBe(0); // a clean shutdown
  });

  it('runs a container from a bundle whose config.json was made by `runc spec`, exit 0 and non-zero', async () => {
    if (!RUNC) return expect.fail('runc is not installed (scripts/setup-host.sh installs it)');
    const spec = runcSpec(agent.bundle, ['sh', '-c', 'echo hello from $(hostname); echo oops >&2; exit 0']);
    fs.writeFileSync(path.join(agent.bundle, 'config.json'), JSON.stringify(spec));
    const ok = await run(client, uniqueId(), { bundle: agent.bundle });
    expect(ok).toMatchObject({ status: { exitCode: 0, signal: 0, oomKilled: false }, stdout: 'hello from runc\n', stderr: 'oops\n' });

    spec.process.args = ['sh', '-c', 'exit 3'];
    fs.writeFileSync(path.join(agent.bundle, 'config.json'), JSON.stringify(spec));
    const failed = await run(client, uniqueId(), { bundle: agent.bundle });
    expect(failed.status).toEqual({ exitCode: 3, signal: 0, oomKilled: false });
  });

  it('honours the runc spec defaults: capabilities, no_new_privs, rlimits, masked and read-only paths', async () => {
    if (!RUNC) return expect.fail('runc is not installed');
    const spec = runcSpec(agent.bundle, [
      'sh',
      '-c',
      'grep -E "^(CapBnd|CapEff|NoNewPrivs)" /proc/self/status; ulimit -n; cat /proc/kcore | wc -c; touch /proc/sys/x 2>&1 | cut -c1-5; echo pid=$$',
    ]);
    const r = await run(client, uniqueId(), { config: spec, rootfs: agent.rootfs });
    // runc's default set: CAP_AUDIT_WRITE (29), CAP_KILL (5), CAP_NET_BIND_SERVICE (10).
    expect(r.stdout).toContain('CapBnd:\t0000000020000420');
    expect(r.stdout).toContain('CapEff:\t0000000020000420');
    expect(r.stdout).toContain('NoNewPrivs:\t1');
    expect(r.stdout).toMatch(/\n1024\n0\n/); // RLIMIT_NOFILE 1024; /proc/kcore masked by /dev/null
    expect(r.stdout).toContain('pid=1\n'); // own pid namespace
    expect(r.status.exitCode).toBe(0);
  });

  it('honours env, cwd, user, additional groups and hostname from the config', async () => {
    const spec = minimalSpec(['sh', '-c', 'echo "$FOO"; pwd; id -u; id -g; id -G; hostname'], {
      env: ['PATH=/bin', 'FOO=bar baz'],
      cwd: '/home/nobody',
      user: { uid: 65534, gid: 65534, additionalGids: [10] },
    });
    const r = await run(client, uniqueId(), { config: spec, rootfs: agent.rootfs });
    expect(r.stdout).toBe('bar baz\n/home/nobody\n65534\n65534\n65534 10\nvmpod-test\n');
    expect(r.status.exitCode).toBe(0);
  });

  it('bind-mounts host paths, read-only where asked, and keeps the mount inside the container', async () => {
    const shared = path.join(agent.dir, 'shared');
    fs.mkdirSync(shared, { recursive: true });
    fs.writeFileSync(path.join(shared, 'hello.txt'), 'from the host\n');
    const spec = minimalSpec(['sh', '-c', 'cat /data/hello.txt; echo x > /data/new 2>/dev/null || echo read-only; echo y > /rw/new && echo wrote; grep -c " /data " /proc/mounts']);
    spec.mounts!.push(
      { destination: '/data', type: 'bind', source: shared, options: ['rbind', 'ro'] },
      { destination: '/rw', source: shared, options: ['bind'] },
    );
    const r = await run(client, uniqueId(), { config: spec, rootfs: agent.rootfs });
    expect(r.stdout).toBe('from the host\nread-only\nwrote\n1\n');
    expect(fs.readFileSync(path.join(shared, 'new'), 'utf8')).toBe('y\n');
    expect(fs.existsSync(path.join(agent.rootfs, 'data'))).toBe(true); // the mount point, made by the agent
    expect(fs.readdirSync(path.join(agent.rootfs, 'data'))).toEqual([]); // nothing mounted on the host
  });

  it('makes read-only binds read-only all the way down: the submounts an rbind brings, and those of a read-only root', async () => {
    // A host directory with a tmpfs on sub/, and a rootfs with one, mounted where the agent sees them.
    const shared = path.join(agent.dir, 'ro-shared');
    const rootfs = path.join(agent.dir, 'ro-rootfs');
    fs.mkdirSync(path.join(shared, 'sub'), { recursive: true });
    makeBusyboxRootfs(rootfs);
    fs.mkdirSync(path.join(rootfs, 'sub'));
    const mounted: string[] = [];
    try {
      for (const point of [path.join(shared, 'sub'), path.join(rootfs, 'sub')]) {
        inAgentMounts(agent, ['mount', '-t', 'tmpfs', '-o', 'size=1m', 'vt-sub', point]);
        mounted.push(point);
      }
      const probe = (dir: string) => `touch ${dir}/x 2>/dev/null && echo "${dir} writable" || echo "${dir} read-only"`;
      const script = [...['/data', '/data/sub', '/rw/sub', '/', '/sub', '/tmp'].map(probe), 'grep -c "^vt-sub /data/sub tmpfs ro," /proc/mounts'];
      const spec = minimalSpec(['sh', '-c', script.join('; ')]);
      spec.root = { path: 'rootfs', readonly: true };
      spec.mounts!.push(
        { destination: '/data', type: 'bind', source: shared, options: ['rbind', 'ro'] },
        { destination: '/rw', type: 'bind', source: shared, options: ['rbind'] },
      );
      const r = await run(client, uniqueId(), { config: spec, rootfs });
      // The OCI mounts on a read-only root (/tmp, /rw) keep their own options.
      expect(r.stdout).toBe('/data read-only\n/data/sub read-only\n/rw/sub writable\n/ read-only\n/sub read-only\n/tmp writable\n1\n');
      expect(fs.existsSync(path.join(shared, 'x'))).toBe(false);
    } finally {
      for (const point of mounted.reverse()) inAgentMounts(agent, ['umount', point]);
    }
  });

  it('mounts read-only where a Mount request says readOnly', async () => {
    // A fresh mount has no submounts here (in a guest, a virtio-fs share can): this checks the
    // request's read-only mount itself.
    const target = path.join(agent.stateDir, 'mnt', 'readonly');
    await client.mount({ type: 'tmpfs', target, readOnly: true, options: ['size=1m'] });
    try {
      const line = fs.readFileSync(`/proc/${agent.process.pid}/mountinfo`, 'utf8').split('\n').find((l) => l.split(' ')[4] === target);
      expect(line?.split(' ')[5]).toMatch(/^ro,/);
      expect(() => fs.writeFileSync(`/proc/${agent.process.pid}/root${target}/x`, 'x')).toThrow(/EROFS/);
    } finally {
      await client.unmount(target);
    }
  });

  it('execs into a running container (its namespaces, its processes) and reports exec exit codes', async () => {
    const id = uniqueId();
    await client.createContainer({ id, config: minimalSpec(['sleep', '1000']), rootfs: agent.rootfs, stdio: { stdout: false, stderr: false } });
    await client.startContainer(id);
    try {
      await client.exec({ containerId: id, execId: 'ps', process: { args: ['sh', '-c', 'hostname; ps -o pid,args | grep -c "sleep 1000"; echo $$'], env: ['PATH=/bin'] } });
      const ps = await client.openStdio(id, { execId: 'ps', stdout: true });
      const out = (await collect(ps.stdout)).toString();
      expect(await client.wait(id, { execId: 'ps' })).toEqual({ exitCode: 0, signal: 0, oomKilled: false });
      const [hostname, count, pid] = out.trim().split('\n');
      expect(hostname).toBe('vmpod-test');
      expect(Number(count)).toBeGreaterThanOrEqual(1); // sees the container's init
      expect(Number(pid)).toBeGreaterThan(1); // a pid inside the container's namespace
      expect(Number(pid)).toBeLessThan(100);

      await client.exec({ containerId: id, execId: 'fail', process: { args: ['sh', '-c', 'exit 42'], env: ['PATH=/bin'] }, stdio: { stdout: false, stderr: false } });
      expect(await client.wait(id, { execId: 'fail' })).toEqual({ exitCode: 42, signal: 0, oomKilled: false });

      const missing = await client
        .exec({ containerId: id, execId: 'missing', process: { args: ['/no/such/binary'] } })
        .catch((e: unknown) => e);
      expect(missing).toBeInstanceOf(AgentError);
      expect(missing).toMatchObject({ agentCode: 'NOT_FOUND' });
      const list = await client.listContainers();
      expect(list.find((c) => c.id === id)?.execs.map((e) => e.execId).sort()).toEqual(['fail', 'ps']);
    } finally {
      await client.deleteContainer(id, { force: true });
    }
  });

  it('delivers SIGTERM and SIGKILL and reports how processes ended', async () => {
    const id = uniqueId();
    // PID 1 of a namespace only gets signals it handles: trap TERM.
    const script = 'trap "echo got TERM; exit 42" TERM; echo ready; while true; do sleep 0.05; done';
    await client.createContainer({ id, config: minimalSpec(['sh', '-c', script]), rootfs: agent.rootfs });
    const { stdout } = await client.openStdio(id, { stdout: true });
    await client.startContainer(id);
    const out = collect(stdout);
    await waitFor(async () => (await client.listContainers()).find((c) => c.id === id)?.status === 'running');
    await client.exec({ containerId: id, execId: 'sleeper', process: { args: ['sleep', '1000'], env: ['PATH=/bin'] }, stdio: { stdout: false, stderr: false } });
    await client.signal(id, 'SIGTERM', { execId: 'sleeper' });
    expect(await client.wait(id, { execId: 'sleeper' })).toEqual({ exitCode: 143, signal: 15, oomKilled: false });
    await new Promise((r) => setTimeout(r, 200)); // let the trap be installed after "ready"
    await client.signal(id, 'SIGTERM');
    expect(await client.wait(id)).toEqual({ exitCode: 42, signal: 0, oomKilled: false });
    expect((await out).toString()).toContain('got TERM');
    await client.deleteContainer(id);

    const id2 = uniqueId();
    await client.createContainer({ id: id2, config: minimalSpec(['sleep', '1000']), rootfs: agent.rootfs, stdio: { stdout: false, stderr: false } });
    await client.startContainer(id2);
    await client.signal(id2, 9);
    expect(await client.wait(id2)).toEqual({ exitCode: 137, signal: 9, oomKilled: false });
    await expect(client.signal(id2, 'SIGKILL')).rejects.toMatchObject({ agentCode: 'FAILED_PRECONDITION' });
    await client.deleteContainer(id2);
  });

  it('echoes stdin back, 4 MiB of it, with end() as EOF', async () => {
    const input = Buffer.alloc(4 * 1024 * 1024);
    for (let i = 0; i < input.length; i++) input[i] = (i * 7 + (i >> 10)) & 0xff;
    const r = await run(client, uniqueId(), { config: minimalSpec(['cat']), rootfs: agent.rootfs }, input);
    expect(r.status.exitCode).toBe(0);
    expect(r.raw.length).toBe(input.length);
    expect(createHash('sha256').update(r.raw).digest('hex')).toBe(createHash('sha256').update(input).digest('hex'));
  });

  it('runs a tty session with a window size and a resize', async () => {
    const id = uniqueId();
    const spec = minimalSpec(['sh', '-c', 'stty size; read line; echo "got $line"; stty size; tty'], { terminal: true, consoleSize: { height: 24, width: 80 } });
    await client.createContainer({ id, config: spec, rootfs: agent.rootfs });
    const { stdin, stdout, stderr } = await client.openStdio(id, { stdin: true, stdout: true });
    expect(stderr).toBeNull();
    let text = '';
    stdout!.setEncoding('utf8').on('data', (s: string) => (text += s));
    const ended = new Promise((r) => stdout!.on('end', r));
    await client.startContainer(id);
    await waitFor(() => text.includes('24 80'));
    await client.resizeTty(id, { rows: 40, cols: 132 });
    stdin!.write('hi\r');
    const status = await client.wait(id);
    await ended;
    expect(status, text).toMatchObject({ exitCode: 0 });
    expect(text).toMatch(/24 80\r\n/);
    expect(text).toMatch(/got hi\r\n/);
    expect(text).toMatch(/40 132\r\n/);
    expect(text).toMatch(/\/dev\/pts\/\d+/);
    await expect(client.openStdio(id, { stderr: true })).rejects.toMatchObject({ agentCode: 'INVALID_ARGUMENT' });
    await client.deleteContainer(id);
  });

  it('streams 50 MB of stdout complete and in order, through a slow reader too', async () => {
    const size = 50 * 1024 * 1024;
    const data = Buffer.alloc(size);
    let x = 12345;
    for (let i = 0; i < size; i += 4) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      data.writeUInt32LE(x, i);
    }
    const file = path.join(agent.rootfs, 'data.bin');
    fs.writeFileSync(file, data);
    const expected = createHash('sha256').update(data).digest('hex');
    try {
      // Unhindered, then with the reader stalling mid-way (the agent must hold off, not drop).
      const runs = [];
      for (const stall of [false, true]) {
        const id = uniqueId();
        await client.createContainer({ id, config: minimalSpec(['cat', '/data.bin']), rootfs: agent.rootfs, stdio: { stderr: false } });
        const { stdout } = await client.openStdio(id, { stdout: true });
        const started = process.hrtime.bigint();
        await client.startContainer(id);
        const read = await consume(stdout!, stall ? size / 3 : null);
        runs.push({ ...read, seconds: Number(process.hrtime.bigint() - started) / 1e9 });
        expect(await client.wait(id)).toEqual({ exitCode: 0, signal: 0, oomKilled: false });
        expect(read.bytes).toBe(size);
        expect(read.hash).toBe(expected);
        await client.deleteContainer(id);
      }
      // The peer: the same file through a plain pipe from a host process into this Node process.
      const started = process.hrtime.bigint();
      const cat = spawn(BUSYBOX, ['cat', file], { stdio: ['ignore', 'pipe', 'ignore'] });
      const raw = await consume(cat.stdout, null);
      const rawSeconds = Number(process.hrtime.bigint() - started) / 1e9;
      expect(raw.hash).toBe(expected);
      const agentMBs = size / 1e6 / runs[0]!.seconds;
      const rawMBs = size / 1e6 / rawSeconds;
      console.log(
        `stdio on the host, 50 MB: agent ${agentMBs.toFixed(0)} MB/s, plain pipe ${rawMBs.toFixed(0)} MB/s, ratio ${(agentMBs / rawMBs).toFixed(2)}`,
      );
    } finally {
      fs.rmSync(file, { force: true });
    }
  });

  it('runs two containers at once, each with its own output and hostname', async () => {
    const a = uniqueId('a');
    const b = uniqueId('b');
    const spec = (name: string) => ({ ...minimalSpec(['sh', '-c', `for i in 1 2 3; do echo ${name}$i; sleep 0.05; done; hostname`]), hostname: name });
    const [ra, rb] = await Promise.all([
      run(client, a, { config: spec('alpha'), rootfs: agent.rootfs }),
      run(client, b, { config: spec('beta'), rootfs: agent.rootfs }),
    ]);
    expect(ra.stdout).toBe('alpha1\nalpha2\nalpha3\nalpha\n');
    expect(rb.stdout).toBe('beta1\nbeta2\nbeta3\nbeta\n');
  });

  it('lets a second session wait for, attach to and signal a container the first one started', async () => {
    const id = uniqueId();
    const first = await agent.connect();
    await first.createContainer({ id, config: minimalSpec(['sh', '-c', 'echo early; read x; echo late; exit 7']), rootfs: agent.rootfs, stdio: { stdin: true } });
    const firstStdout = (await first.openStdio(id, { stdout: true })).stdout!;
    await first.startContainer(id);
    const second = await agent.connect();
    // One reader per stream: the second session is refused while the first holds stdout.
    await expect(second.openStdio(id, { stdout: true })).rejects.toMatchObject({ agentCode: 'BUSY' });
    const early = await new Promise<string>((r) => firstStdout.once('data', (b: Buffer) => r(b.toString())));
    expect(early).toBe('early\n');
    const waited = second.wait(id);
    first.close(); // the first host process goes away: the container lives on
    await waitFor(async () => (await second.listContainers()).find((c) => c.id === id)?.status === 'running');
    const { stdin, stdout } = await second.openStdio(id, { stdin: true, stdout: true });
    const rest = collect(stdout);
    stdin!.end('go\n');
    expect(await waited).toEqual({ exitCode: 7, signal: 0, oomKilled: false });
    expect((await rest).toString()).toBe('late\n');
    await second.deleteContainer(id);
    second.close();
  });

  it('reports stats from the container cgroup', async () => {
    if (!agent.cgroupRoot) return expect.fail('no cgroup2 hierarchy on this host');
    const id = uniqueId();
    await client.createContainer({ id, config: minimalSpec(['sh', '-c', 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 1000']), rootfs: agent.rootfs });
    await client.startContainer(id);
    try {
      await new Promise((r) => setTimeout(r, 300));
      const stats = await client.stats(id);
      expect(stats.containerId).toBe(id);
      expect(stats.cpu.usageUsec).toBeGreaterThan(0);
      const controllers = client.info.controllers;
      if (controllers.includes('pids')) expect(stats.pids.current).toBeGreaterThanOrEqual(1);
      else expect(stats.pids.current).toBeNull();
      if (controllers.includes('memory')) expect(stats.memory.currentBytes).toBeGreaterThan(0);
      else expect(stats.memory.currentBytes).toBeNull();
      expect(fs.existsSync(path.join(agent.cgroupRoot, id, 'cgroup.procs'))).toBe(true);
    } finally {
      await client.deleteContainer(id, { force: true });
    }
    expect(fs.existsSync(path.join(agent.cgroupRoot, id))).toBe(false);
  });

  it('reports an OOM kill from memory.events', async (ctx) => {
    if (!client.info.controllers.includes('memory')) {
      ctx.skip('the host cgroup2 hierarchy has no memory controller (cgroup v1 hybrid); the guest has one');
      return;
    }
    const id = uniqueId();
    const spec = minimalSpec(['sh', '-c', 'x=a; while true; do x="$x$x"; done']);
    spec.linux!.resources = { memory: { limit: 32 * 1024 * 1024, swap: 32 * 1024 * 1024 } };
    await client.createContainer({ id, config: spec, rootfs: agent.rootfs, stdio: { stdout: false, stderr: false } });
    await client.startContainer(id);
    expect(await client.wait(id)).toMatchObject({ signal: 9, oomKilled: true });
    await client.deleteContainer(id);
  });

  it('gives a builtin-rootfs container a copy-on-write root that never changes the original', async () => {
    const id = uniqueId();
    const r = await run(client, id, { config: minimalSpec(['sh', '-c', 'echo x > /written; rm /bin/ls; cat /written; ls /bin/ls 2>&1 | cut -c1-3']), rootfs: 'builtin' });
    expect(r.stdout).toBe('x\nls:\n');
    expect(fs.existsSync(path.join(agent.rootfs, 'written'))).toBe(false);
    expect(fs.existsSync(path.join(agent.rootfs, 'bin', 'ls'))).toBe(true);
    expect(fs.existsSync(path.join(agent.stateDir, 'containers', id))).toBe(false);
  });

  it('with overlay, gives a rootfs path the same copy-on-write root over it (a rootfs image)', async () => {
    const id = uniqueId();
    const r = await run(client, id, { config: minimalSpec(['sh', '-c', 'echo x > /written; rm /bin/ls; cat /written; ls /bin/ls 2>&1 | cut -c1-3']), rootfs: agent.rootfs, overlay: true });
    expect(r.stdout).toBe('x\nls:\n');
    expect(fs.existsSync(path.join(agent.rootfs, 'written'))).toBe(false);
    expect(fs.existsSync(path.join(agent.rootfs, 'bin', 'ls'))).toBe(true);
    expect(fs.existsSync(path.join(agent.stateDir, 'containers', id))).toBe(false);
  });

  it("reaps the processes left when a container's init exits (they come to the agent as orphans)", async () => {
    const agentPid = agent.process.pid!;
    /** Children of the agent in /proc (a subreaper here, PID 1 in a guest), with their state. */
    const children = (): { pid: number; state: string; name: string }[] =>
      fs.readdirSync('/proc').filter((p) => /^\d+$/u.test(p)).flatMap((p) => {
        try {
          const status = fs.readFileSync(`/proc/${p}/status`, 'utf8');
          if (Number(/^PPid:\s+(\d+)/mu.exec(status)?.[1]) !== agentPid) return [];
          return [{ pid: Number(p), state: /^State:\s+(\S)/mu.exec(status)?.[1] ?? '?', name: /^Name:\s+(\S+)/mu.exec(status)?.[1] ?? '?' }];
        } catch {
          return [];
        }
      });
    const r = await run(client, uniqueId(), { config: minimalSpec(['sh', '-c', 'sleep 30 & sleep 31 & echo started; exit 0']), rootfs: agent.rootfs });
    expect(r.stdout).toBe('started\n');
    expect(r.status.exitCode).toBe(0);
    // The kernel killed the two sleeps with their pid namespace; the agent must have reaped them.
    let left = children();
    for (let i = 0; i < 50 && left.length > 0; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      left = children();
    }
    expect(left).toEqual([]);
  });

  it('rejects bad bundles and configs with clear errors and leaves nothing behind', async () => {
    const cases: [string, Parameters<AgentClient['createContainer']>[0], string, RegExp][] = [
      ['missing bundle', { id: uniqueId(), bundle: path.join(agent.dir, 'nope') }, 'NOT_FOUND', /is not a directory/],
      ['bundle without config.json', { id: uniqueId(), bundle: agent.rootfs }, 'NOT_FOUND', /has no config.json/],
      ['missing rootfs', { id: uniqueId(), config: minimalSpec(['true']), rootfs: path.join(agent.dir, 'none') }, 'NOT_FOUND', /rootfs .* is not a directory/],
      ['no args', { id: uniqueId(), config: { ...minimalSpec([]) }, rootfs: agent.rootfs }, 'INVALID_ARGUMENT', /process\.args/],
      ['wrong type', { id: uniqueId(), config: { ...minimalSpec(['true']), hostname: 42 as unknown as string }, rootfs: agent.rootfs }, 'INVALID_ARGUMENT', /hostname: must be a string/],
      ['bad version', { id: uniqueId(), config: { ...minimalSpec(['true']), ociVersion: '0.9' }, rootfs: agent.rootfs }, 'INVALID_ARGUMENT', /ociVersion/],
      ['unknown capability', { id: uniqueId(), config: minimalSpec(['true'], { capabilities: { bounding: ['CAP_NOPE'] } }), rootfs: agent.rootfs }, 'INVALID_ARGUMENT', /unknown capability "CAP_NOPE"/],
      ['user namespace', { id: uniqueId(), config: { ...minimalSpec(['true']), linux: { namespaces: [{ type: 'user' }] } }, rootfs: agent.rootfs }, 'INVALID_ARGUMENT', /not supported/],
      ['bad mount', { id: uniqueId(), config: { ...minimalSpec(['true']), mounts: [{ destination: 'relative', type: 'tmpfs' }] }, rootfs: agent.rootfs }, 'INVALID_ARGUMENT', /mounts\[0\]\.destination/],
      ['failing mount', { id: uniqueId(), config: { ...minimalSpec(['true']), mounts: [{ destination: '/x', type: 'nosuchfs', source: 'none' }] }, rootfs: agent.rootfs }, 'INTERNAL', /mounts\[0\]: mount none on .* \(type nosuchfs\)/],
    ];
    fs.writeFileSync(path.join(agent.dir, 'bad.json'), '{"ociVersion": "1.0.2", "process": ');
    fs.mkdirSync(path.join(agent.dir, 'badbundle'), { recursive: true });
    fs.copyFileSync(path.join(agent.dir, 'bad.json'), path.join(agent.dir, 'badbundle', 'config.json'));
    cases.push(['invalid JSON', { id: uniqueId(), bundle: path.join(agent.dir, 'badbundle') }, 'INVALID_ARGUMENT', /config\.json: payload is not valid JSON/]);
    for (const [name, request, code, message] of cases) {
      const error = await client.createContainer(request).catch((e: unknown) => e);
      expect(error, name).toBeInstanceOf(AgentError);
      expect((error as AgentError).agentCode, `${name}: ${String(error)}`).toBe(code);
      expect((error as AgentError).message, name).toMatch(message);
    }
    // A missing executable is found at start; the container is left stopped with code 127.
    const id = uniqueId();
    await client.createContainer({ id, config: minimalSpec(['no-such-program']), rootfs: agent.rootfs });
    await expect(client.startContainer(id)).rejects.toMatchObject({ agentCode: 'NOT_FOUND', message: expect.stringMatching(/"no-such-program" not found in \$PATH/) });
    expect(await client.wait(id)).toMatchObject({ exitCode: 127 });
    await client.deleteContainer(id);
    await expect(client.createContainer({ id: uniqueId(), config: minimalSpec(['true']), rootfs: agent.rootfs, stdio: { bogus: true } as StdioRequest })).rejects.toMatchObject({ agentCode: 'INVALID_ARGUMENT' });
    // Nothing is left: no container, no state, no cgroup.
    expect(await client.listContainers()).toEqual([]);
    expect(fs.readdirSync(path.join(agent.stateDir, 'containers'))).toEqual([]);
    if (agent.cgroupRoot) expect(fs.readdirSync(agent.cgroupRoot, { withFileTypes: true }).filter((d) => d.isDirectory())).toEqual([]);
  });

  it('refuses to delete a running container without force, and kills it with force', async () => {
    const id = uniqueId();
    await client.createContainer({ id, config: minimalSpec(['sleep', '1000']), rootfs: agent.rootfs, stdio: { stdout: false, stderr: false } });
    await client.startContainer(id);
    const [info] = (await client.listContainers()).filter((c) => c.id === id);
    await expect(client.deleteContainer(id)).rejects.toMatchObject({ agentCode: 'FAILED_PRECONDITION' });
    await expect(client.createContainer({ id, config: minimalSpec(['true']), rootfs: agent.rootfs })).rejects.toMatchObject({ agentCode: 'ALREADY_EXISTS' });
    await client.deleteContainer(id, { force: true });
    expect(fs.existsSync(`/proc/${info!.pid}/status`) && !fs.readFileSync(`/proc/${info!.pid}/status`, 'utf8').includes('State:\tZ')).toBe(false);
    expect((await client.listContainers()).some((c) => c.id === id)).toBe(false);
  });

  it('mounts a tmpfs under its state dir only, and unmounts it', async () => {
    const target = path.join(agent.stateDir, 'mnt', 'scratch');
    expect(await client.mount({ type: 'tmpfs', target, options: ['size=1m', 'mode=700'] })).toEqual({ target, device: null });
    const mounts = fs.readFileSync(`/proc/${agent.process.pid}/mounts`, 'utf8');
    expect(mounts).toContain(` ${target} tmpfs `);
    // The agent's mounts live in its own mount namespace on the host, never in ours.
    expect(fs.readFileSync('/proc/self/mounts', 'utf8')).not.toContain(target);
    await expect(client.mount({ type: 'tmpfs', target: '/mnt/elsewhere' })).rejects.toMatchObject({ agentCode: 'PERMISSION_DENIED' });
    await expect(client.mount({ type: 'tmpfs', target: path.join(agent.stateDir, 'containers', 'x') })).rejects.toMatchObject({ agentCode: 'PERMISSION_DENIED' });
    await expect(client.mount({ type: 'ext4', target: path.join(agent.stateDir, 'mnt', 'disk'), device: { serial: 'nosuchdisk' }, timeoutMs: 100 })).rejects.toMatchObject({ agentCode: 'NOT_FOUND' });
    await client.unmount(target);
    expect(fs.readFileSync(`/proc/${agent.process.pid}/mounts`, 'utf8')).not.toContain(` ${target} `);
  });

  it('checks 9p mounts: the tag, the transport and its options; a kernel without 9p or a missing tag is a clear error', async () => {
    expect(client.info.features).toContain('mount-9p');
    const target = path.join(agent.stateDir, 'mnt', 'ninep');
    for (const bad of [{ source: undefined }, { source: 'a b' }, { source: 'x'.repeat(32) }, { source: 'ok', options: ['trans=tcp'] }, { source: 'ok', options: ['version=9p3000'] }, { source: 'ok', options: ['msize=12'] }]) {
      await expect(client.mount({ type: '9p', target, ...bad } as MountRequest)).rejects.toMatchObject({ agentCode: 'INVALID_ARGUMENT' });
    }
    // This host has no virtio-9p device, and maybe no 9p at all: the mount fails saying which.
    const error = (await client.mount({ type: '9p', source: 'vmpodtest', target, readOnly: true }).catch((e: unknown) => e)) as AgentError;
    expect(error).toBeInstanceOf(AgentError);
    expect(error.message).toMatch(/trans=virtio,version=9p2000\.L,msize=131072/u);
    if (fs.readFileSync('/proc/filesystems', 'utf8').includes('\t9p\n')) {
      expect(error).toMatchObject({ agentCode: 'NOT_FOUND', errnoName: 'ENOENT' });
      expect(error.message).toMatch(/no virtio-9p device has the mount tag vmpodtest/u);
    } else {
      expect(error).toMatchObject({ agentCode: 'FAILED_PRECONDITION', errnoName: 'ENODEV' });
      expect(error.message).toMatch(/this kernel has no 9p filesystem/u);
    }
    expect(fs.readFileSync(`/proc/${agent.process.pid}/mounts`, 'utf8')).not.toContain(` ${target} `);
  });

  it('reports the clock offset and leaves the host clock alone', async () => {
    const r = await client.setTime(new Date());
    expect(r.applied).toBe(false);
    expect(Math.abs(r.offsetMs)).toBeLessThan(60_000);
  });
});

/** Hashes a stream to its end; optionally pauses it for 300 ms once `stallAt` bytes arrived. */
async function consume(stream: NodeJS.ReadableStream & { pause(): unknown; resume(): unknown }, stallAt: number | null) {
  const hash = createHash('sha256');
  let bytes = 0;
  let stalled = false;
  await new Promise<void>((resolve, reject) => {
    stream.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      bytes += chunk.length;
      if (stallAt !== null && !stalled && bytes > stallAt) {
        stalled = true;
        stream.pause();
        setTimeout(() => stream.resume(), 300);
      }
    });
    stream.on('end', resolve);
    stream.on('error', reject);
  });
  return { bytes, hash: hash.digest('hex') };
}

async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}
