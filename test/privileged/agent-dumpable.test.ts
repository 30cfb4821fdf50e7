// What a process of a container can get of the agent's children: until its execve, a child is a
// copy of the agent (memory, descriptors, environment) and must not be dumpable; once it runs the
// user's program it is an ordinary, dumpable process again.
//
// Dumpability decides only for a reader whose uid and capabilities match the target's but that
// lacks CAP_SYS_PTRACE (a root process with fewer capabilities, or with CAP_SYS_PTRACE, is
// refused or allowed whatever the target says). So this file runs its own agent without
// CAP_SYS_PTRACE in its bounding set, and probes /proc/PID/fd and /proc/PID/mem through a process
// with the same capabilities: they open exactly when the target is dumpable. (Not environ: newer
// kernels than the guest's let CAP_SYS_ADMIN read it from any process.)
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../../src/agent/client.js';
import { AGENT_BINARY, collect, haveAgent, haveBusybox, isRoot, makeBusyboxRootfs, minimalSpec, uniqueId } from './agent-host.js';

const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => fs.existsSync(p));
const ready = isRoot && haveAgent && haveBusybox && SETPRIV !== undefined;
const reason = !isRoot ? 'needs root' : !haveAgent ? `no agent binary at ${AGENT_BINARY}` : !haveBusybox ? 'busybox-static is not installed' : 'setpriv (util-linux) is missing';
const WITHOUT_PTRACE = ['--bounding-set=-sys_ptrace'];

/** Whether a root process without CAP_SYS_PTRACE (else with the agent's capabilities) may read PID's fd links and open its memory. */
function probe(pid: number): { fd: boolean; mem: boolean } {
  const ok = (args: string[]) => spawnSync(SETPRIV!, [...WITHOUT_PTRACE, ...args], { stdio: 'ignore' }).status === 0;
  return { fd: ok(['readlink', `/proc/${pid}/fd/0`]), mem: ok(['dd', `if=/proc/${pid}/mem`, 'count=0', 'status=none']) };
}
const DUMPABLE = { fd: true, mem: true };
const NOT_DUMPABLE = { fd: false, mem: false };

describe.skipIf(!ready)(`vmpod-agent: children are not dumpable before execve (${ready ? 'root' : reason})`, () => {
  let dir: string;
  let rootfs: string;
  let agentProcess: ReturnType<typeof spawn>;
  let exited: Promise<number | null>;
  let client: AgentClient;
  let log = '';

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-dumpable-'));
    rootfs = path.join(dir, 'rootfs');
    makeBusyboxRootfs(rootfs);
    const socket = path.join(dir, 'agent.sock');
    // setpriv execs the agent: same pid.
    agentProcess = spawn(SETPRIV!, [...WITHOUT_PTRACE, AGENT_BINARY, '--listen', `unix:${socket}`, '--state-dir', path.join(dir, 'state'), '--builtin-rootfs', rootfs, '--cgroup', 'none', '--debug'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    agentProcess.stderr!.setEncoding('utf8').on('data', (s: string) => (log += s));
    exited = new Promise((resolve) => agentProcess.once('exit', (code) => resolve(code)));
    for (let i = 0; i < 250 && !fs.existsSync(socket); i++) {
      if (agentProcess.exitCode !== null) throw new Error(`vmpod-agent exited: ${log}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    client = await AgentClient.connectUnix(socket, { timeoutMs: 5000, clientName: 'agent-dumpable-test' });
  });

  afterAll(async () => {
    try {
      await client?.shutdown({ timeoutMs: 5000 });
    } catch {
      // Gone already: killed below if not.
    }
    client?.close();
    const code = agentProcess ? await Promise.race([exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 8000))]) : 0;
    if (code === 'timeout') {
      // Its children first (a container's init takes its pid namespace with it), then the agent.
      for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/u.test(p))) {
        try {
          if (Number(/^PPid:\s+(\d+)/mu.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]) === agentProcess.pid) process.kill(Number(pid), 'SIGKILL');
        } catch {
          // gone already
        }
      }
      agentProcess.kill('SIGKILL');
    }
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    expect(code).toBe(0);
  });

  it('runs its reader with the capabilities of the agent (the check below means something)', () => {
    const status = (pid: number) => /^CapPrm:\s+(\S+)/mu.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
    const reader = spawnSync(SETPRIV!, [...WITHOUT_PTRACE, '/bin/grep', '^CapPrm:', '/proc/self/status'], { encoding: 'utf8' });
    expect(reader.stdout.split(/\s+/u)[1]).toBe(status(agentProcess.pid!));
    expect(BigInt(`0x${status(agentProcess.pid!)}`) & (1n << 19n)).toBe(0n); // no CAP_SYS_PTRACE
  });

  it('is not dumpable itself: its children are born so', () => {
    expect(probe(agentProcess.pid!)).toEqual(NOT_DUMPABLE);
  });

  it('keeps a container init waiting for StartContainer out of reach; once started, it is an ordinary process', async () => {
    const id = uniqueId();
    const { pid } = await client.createContainer({ id, config: minimalSpec(['sleep', '1000']), rootfs, stdio: { stdout: false, stderr: false } });
    try {
      // The init is set up and blocked until StartContainer: agent code in a copy of the agent.
      expect(probe(pid)).toEqual(NOT_DUMPABLE);
      await client.startContainer(id);
      expect(probe(pid)).toEqual(DUMPABLE);
    } finally {
      await client.deleteContainer(id, { force: true });
    }
  });

  it("makes an exec'd process dumpable again once it runs the program, for root and for another user", async () => {
    const id = uniqueId();
    await client.createContainer({ id, config: minimalSpec(['sleep', '1000']), rootfs, stdio: { stdout: false, stderr: false } });
    await client.startContainer(id);
    try {
      const { pid } = await client.exec({ containerId: id, execId: 'root', process: { args: ['sleep', '1000'], env: ['PATH=/bin'] }, stdio: { stdout: false, stderr: false } });
      expect(probe(pid)).toEqual(DUMPABLE);
      // /proc/PID of a dumpable process belongs to its user; that of a non-dumpable one to root.
      await client.exec({ containerId: id, execId: 'nobody', process: { args: ['sh', '-c', 'stat -c %u /proc/$$'], env: ['PATH=/bin'], user: { uid: 65534, gid: 65534 } } });
      const { stdout } = await client.openStdio(id, { execId: 'nobody', stdout: true });
      expect((await collect(stdout)).toString()).toBe('65534\n');
      expect(await client.wait(id, { execId: 'nobody' })).toMatchObject({ exitCode: 0 });
    } finally {
      await client.deleteContainer(id, { force: true });
    }
  });
});
