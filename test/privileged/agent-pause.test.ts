// The guest agent run on the host as root: PauseContainer / ResumeContainer (cgroup v2
// cgroup.freeze of the container's own cgroup) and UpdateContainer's checks. The host's
// cgroup2 hierarchy (/sys/fs/cgroup/unified here) freezes; it has no memory, pids or cpu
// controller, so UpdateContainer's writes are tested in a VM (sandbox/container-pause.test.ts).
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentError } from '../../src/agent/errors.js';
import { FrameDecoder, FrameType, encodeFrame } from '../../src/agent/framing.js';
import type { AgentClient } from '../../src/agent/client.js';
import type { OciSpec } from '../../src/agent/messages.js';
import { AGENT_BINARY, haveAgent, haveBusybox, hostCgroup2, isRoot, minimalSpec, startHostAgent, uniqueId, type HostAgent } from './agent-host.js';

const cgroup2 = hostCgroup2();
const ready = isRoot && haveAgent && haveBusybox && cgroup2 !== null;
const reason = !isRoot ? 'needs root' : !haveAgent ? `no agent binary at ${AGENT_BINARY}` : !haveBusybox ? 'busybox-static is not installed' : 'no cgroup2 hierarchy';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, fn: () => T | undefined | false, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const value = fn();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * Requests sent as raw frames after Hello, bypassing AgentClient's own checks: what the agent
 * answers to each, in order.
 */
async function rawRequests(socketPath: string, requests: { method: string; params: unknown }[]): Promise<{ result?: unknown; error?: { code: string; message: string } }[]> {
  const socket = net.createConnection({ path: socketPath });
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const decoder = new FrameDecoder();
  const answers = new Map<number, { result?: unknown; error?: { code: string; message: string } }>();
  const all = [{ method: 'Hello', params: { version: 1 } }, ...requests];
  const done = new Promise<void>((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => {
      for (const f of decoder.push(chunk)) {
        if (f.type === FrameType.Response) answers.set(f.stream, JSON.parse(f.payload.toString()) as never);
      }
      if (answers.size === all.length) resolve();
    });
    socket.once('close', () => reject(new Error('the agent hung up')));
  });
  all.forEach((r, i) => socket.write(encodeFrame(2 * i + 1, FrameType.Request, 0, Buffer.from(JSON.stringify(r)))));
  await done;
  socket.destroy();
  return all.slice(1).map((_, i) => answers.get(2 * i + 3)!);
}

describe.skipIf(!ready)(`vmpod-agent pause, resume and update on the host (${ready ? 'root' : reason})`, () => {
  let agent: HostAgent;
  let client: AgentClient;
  let out: string;

  beforeAll(async () => {
    agent = await startHostAgent();
    client = agent.client;
    out = path.join(agent.dir, 'out');
    fs.mkdirSync(out);
  });

  afterAll(async () => {
    expect(await agent?.cleanup()).toBe(0);
  });

  /** A spec whose process sees the test's folder at /out. */
  function specWithOut(script: string): OciSpec {
    const spec = minimalSpec(['sh', '-c', script]);
    spec.mounts!.push({ destination: '/out', type: 'bind', source: out, options: ['rbind'] });
    return spec;
  }

  async function started(id: string, script: string): Promise<number> {
    const { pid } = await client.createContainer({ id, config: specWithOut(script), rootfs: agent.rootfs, stdio: { stdout: false, stderr: false } });
    await client.startContainer(id);
    return pid;
  }

  const read = (file: string) => {
    try {
      return fs.readFileSync(path.join(out, file), 'utf8').trim();
    } catch {
      return undefined;
    }
  };
  const statusOf = async (id: string) => (await client.listContainers()).find((c) => c.id === id)?.status;

  it('announces pause-container and update-container', () => {
    expect(client.info.features).toEqual(expect.arrayContaining(['pause-container', 'update-container']));
  });

  it('freezes a running counter and lets it go on when resumed; the container reports paused meanwhile', async () => {
    const id = uniqueId('pause');
    const file = `${id}.count`;
    // Each line is written whole (a new file renamed over the old), so a reader never sees half of one.
    await started(id, `i=0; while :; do i=$((i+1)); echo $i > /out/${file}.new; mv /out/${file}.new /out/${file}; done`);
    try {
      const first = Number(await until('the counter to start', () => read(file)));
      await until('the counter to move', () => Number(read(file)) > first);
      await client.pauseContainer(id);
      expect(await statusOf(id)).toBe('paused');
      const cgroup = path.join(agent.cgroupRoot!, id);
      expect(fs.readFileSync(path.join(cgroup, 'cgroup.events'), 'utf8')).toContain('frozen 1');
      const frozen = read(file);
      await sleep(500);
      expect(read(file)).toBe(frozen); // not one more increment while frozen
      await client.resumeContainer(id);
      expect(await statusOf(id)).toBe('running');
      expect(fs.readFileSync(path.join(cgroup, 'cgroup.events'), 'utf8')).toContain('frozen 0');
      await until('the counter to go on after resume', () => Number(read(file)) > Number(frozen));
    } finally {
      await client.deleteContainer(id, { force: true });
    }
  });

  it('refuses exec into a paused container, a second pause, a resume of a running one, and a pause of a created one', async () => {
    const id = uniqueId('refuse');
    await started(id, 'while :; do sleep 1; done');
    const created = uniqueId('created');
    await client.createContainer({ id: created, config: specWithOut('true'), rootfs: agent.rootfs, stdio: { stdout: false, stderr: false } });
    try {
      await expect(client.resumeContainer(id)).rejects.toMatchObject({ agentCode: 'FAILED_PRECONDITION', message: expect.stringContaining('running, not paused') });
      await expect(client.pauseContainer(created)).rejects.toMatchObject({ agentCode: 'FAILED_PRECONDITION', message: expect.stringContaining('is created, not running') });
      await client.pauseContainer(id);
      await expect(client.pauseContainer(id)).rejects.toMatchObject({ agentCode: 'FAILED_PRECONDITION', message: expect.stringContaining('paused already') });
      const exec = client.exec({ containerId: id, execId: 'e1', process: { args: ['true'], env: ['PATH=/bin'], cwd: '/' } });
      await expect(exec).rejects.toBeInstanceOf(AgentError);
      await expect(exec).rejects.toMatchObject({ agentCode: 'FAILED_PRECONDITION', message: expect.stringContaining('is paused: resume it to exec') });
      await expect(client.deleteContainer(id)).rejects.toMatchObject({ agentCode: 'FAILED_PRECONDITION', message: expect.stringContaining('is paused') });
      await client.resumeContainer(id);
      const { pid } = await client.exec({ containerId: id, execId: 'e2', process: { args: ['true'], env: ['PATH=/bin'], cwd: '/' } });
      expect(pid).toBeGreaterThan(0);
      expect(await client.wait(id, { execId: 'e2' })).toEqual({ exitCode: 0, signal: 0, oomKilled: false });
    } finally {
      await client.deleteContainer(id, { force: true });
      await client.deleteContainer(created, { force: true });
    }
  });

  it('queues a signal to a paused container until it is resumed; SIGKILL ends it at once', async () => {
    const id = uniqueId('sig');
    await started(id, `trap 'echo term > /out/${id}.term; exit 7' TERM; echo up > /out/${id}.up; while :; do sleep 0.1; done`);
    try {
      await until('the trap to be set', () => read(`${id}.up`));
      await client.pauseContainer(id);
      let exited = false;
      const waited = client.wait(id).then((s) => ((exited = true), s));
      await client.signal(id, 'SIGTERM');
      await sleep(500);
      expect(exited).toBe(false);
      expect(read(`${id}.term`)).toBeUndefined(); // the handler has not run
      expect(await statusOf(id)).toBe('paused');
      await client.resumeContainer(id);
      expect(await waited).toEqual({ exitCode: 7, signal: 0, oomKilled: false });
      expect(read(`${id}.term`)).toBe('term');
    } finally {
      await client.deleteContainer(id, { force: true });
    }

    const killed = uniqueId('kill');
    await started(killed, 'while :; do sleep 0.1; done');
    await client.pauseContainer(killed);
    await client.signal(killed, 'SIGKILL');
    expect(await client.wait(killed)).toEqual({ exitCode: 137, signal: 9, oomKilled: false });
    expect(await statusOf(killed)).toBe('stopped');
    await expect(client.resumeContainer(killed)).rejects.toMatchObject({ agentCode: 'FAILED_PRECONDITION' });
    await client.deleteContainer(killed);
    expect(fs.existsSync(path.join(agent.cgroupRoot!, killed))).toBe(false);
  });

  it('deletes a paused container with force (its processes are killed), leaving no cgroup behind', async () => {
    const id = uniqueId('delp');
    const pid = await started(id, 'sleep 1000 & while :; do sleep 0.1; done');
    await client.pauseContainer(id);
    await client.deleteContainer(id, { force: true });
    expect(fs.existsSync(`/proc/${pid}`)).toBe(false);
    expect(fs.existsSync(path.join(agent.cgroupRoot!, id))).toBe(false);
    expect((await client.listContainers()).some((c) => c.id === id)).toBe(false);
  });

  it('refuses bad UpdateContainer requests field by field, before touching the cgroup', async () => {
    const id = uniqueId('upd');
    await started(id, 'while :; do sleep 1; done');
    try {
      const cases: [unknown, string][] = [
        [{}, 'resources: holds nothing to update'],
        [{ memory: { limit: 1000 } }, 'resources.memory.limit: must be -1 (no limit) or at least 1048576'],
        [{ memory: { limit: -2 } }, 'resources.memory.limit'],
        [{ memory: { swap: 1 << 30 } }, 'resources.memory.swap: is memory + swap: it needs a memory.limit'],
        [{ memory: { limit: 1 << 30, swap: 1 << 20 } }, 'resources.memory.swap: is memory + swap: it must not be below memory.limit'],
        [{ memory: { kernel: 1 } }, 'resources.memory.kernel: unknown field'],
        [{ cpu: { shares: 1 } }, 'resources.cpu.shares'],
        [{ cpu: { shares: 262145 } }, 'resources.cpu.shares'],
        [{ cpu: { quota: 999 } }, 'resources.cpu.quota: must be -1 (no limit) or at least 1000'],
        [{ cpu: { period: 1000001 } }, 'resources.cpu.period'],
        [{ cpu: { cpus: '1-0' } }, 'resources.cpu.cpus: must be a list like 0-1,3'],
        [{ cpu: { cpus: '0,,1' } }, 'resources.cpu.cpus'],
        [{ cpu: { mems: '4096' } }, 'resources.cpu.mems'],
        [{ cpu: { realtimeRuntime: 1 } }, 'resources.cpu.realtimeRuntime: unknown field'],
        [{ pids: { limit: 4194305 } }, 'resources.pids.limit'],
        [{ pids: {} }, 'resources.pids.limit: is required'],
        [{ blockIO: { weight: 9 } }, 'resources.blockIO.weight'],
        [{ blockIO: { weightDevice: [] } }, 'resources.blockIO.weightDevice: unknown field'],
        [{ hugepageLimits: [] }, 'resources.hugepageLimits: unknown field'],
        [{ memory: { limit: 1.5e9 + 0.5 } }, 'resources.memory.limit'],
        [{ memory: { limit: '1G' } }, 'resources.memory.limit'],
      ];
      const answers = await rawRequests(agent.socket, cases.map(([resources]) => ({ method: 'UpdateContainer', params: { id, resources } })));
      answers.forEach((answer, i) => {
        expect(answer.error?.code, JSON.stringify(cases[i]![0])).toBe('INVALID_ARGUMENT');
        expect(answer.error?.message).toContain(cases[i]![1]);
      });
      const [unknownKey, noSuch] = await rawRequests(agent.socket, [
        { method: 'UpdateContainer', params: { id, resources: { pids: { limit: 5 } }, force: true } },
        { method: 'UpdateContainer', params: { id: 'nosuch', resources: { pids: { limit: 5 } } } },
      ]);
      expect(unknownKey!.error).toMatchObject({ code: 'INVALID_ARGUMENT', message: 'force: unknown field' });
      expect(noSuch!.error).toMatchObject({ code: 'NOT_FOUND' });
    } finally {
      await client.deleteContainer(id, { force: true });
    }
  });

  it('refuses an update of a controller this cgroup lacks, and of a stopped container', async () => {
    const id = uniqueId('upc');
    await started(id, 'while :; do sleep 1; done');
    try {
      for (const [resources, controller] of [
        [{ memory: { limit: 64 << 20 } }, 'memory'],
        [{ pids: { limit: 10 } }, 'pids'],
        [{ cpu: { cpus: '0' } }, 'cpuset'],
      ] as const) {
        if (client.info.controllers.includes(controller)) continue; // this host has it: the VM test covers the write
        await expect(client.updateContainer(id, resources)).rejects.toMatchObject({
          agentCode: 'FAILED_PRECONDITION',
          message: expect.stringContaining(`the ${controller} controller is not available`),
        });
      }
      await client.signal(id, 'SIGKILL');
      await client.wait(id);
      await expect(client.updateContainer(id, { pids: { limit: 10 } })).rejects.toMatchObject({ agentCode: 'FAILED_PRECONDITION', message: expect.stringContaining('stopped') });
      await expect(client.pauseContainer(id)).rejects.toMatchObject({ agentCode: 'FAILED_PRECONDITION', message: expect.stringContaining('is stopped, not running') });
    } finally {
      await client.deleteContainer(id, { force: true });
    }
  });
});

describe.skipIf(!(isRoot && haveAgent && haveBusybox))('vmpod-agent without cgroups', () => {
  it('refuses pause, resume and update with a clear error', async () => {
    const agent = await startHostAgent({ cgroups: false });
    try {
      const id = uniqueId('nocg');
      await agent.client.createContainer({ id, config: minimalSpec(['sh', '-c', 'while :; do sleep 1; done']), rootfs: agent.rootfs });
      await agent.client.startContainer(id);
      await expect(agent.client.pauseContainer(id)).rejects.toMatchObject({ agentCode: 'FAILED_PRECONDITION', message: expect.stringContaining('has no cgroup') });
      await expect(agent.client.resumeContainer(id)).rejects.toMatchObject({ agentCode: 'FAILED_PRECONDITION' });
      await expect(agent.client.updateContainer(id, { pids: { limit: 5 } })).rejects.toMatchObject({ agentCode: 'FAILED_PRECONDITION', message: expect.stringContaining('has no cgroup') });
      await agent.client.deleteContainer(id, { force: true });
    } finally {
      expect(await agent.cleanup()).toBe(0);
    }
  });
});
