// CreateContainer's `direct` (stream ports) against bad and hostile input, on the real agent run
// on the host: every malformed request is INVALID_ARGUMENT, a well-formed one naming a port
// that does not exist is NOT_FOUND, nothing is left behind, and the agent keeps serving.
// (Stream ports themselves need a VM: test/privileged/sandbox/stdio-direct.test.ts.)
import fs from 'node:fs';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FrameDecoder, FrameType, encodeFrame, type Frame } from '../../src/agent/framing.js';
import { AGENT_BINARY, collect, haveAgent, haveBusybox, isRoot, minimalSpec, startHostAgent, uniqueId, type HostAgent } from './agent-host.js';

const ready = isRoot && haveAgent && haveBusybox;
const COOKIE = `ff${'ab'.repeat(31)}`;

/** Sends requests on a raw session (no client-side checks) and returns the answers by stream. */
async function ask(socketPath: string, requests: unknown[]): Promise<Map<number, { error?: { code: string; message: string } }>> {
  const socket = net.createConnection({ path: socketPath });
  const decoder = new FrameDecoder();
  const frames: Frame[] = [];
  socket.on('data', (chunk: Buffer) => frames.push(...decoder.push(chunk)));
  socket.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const frame = (stream: number, body: unknown) => encodeFrame(stream, FrameType.Request, 0, Buffer.from(JSON.stringify(body)));
  socket.write(frame(1, { method: 'Hello', params: { version: 1 } }));
  requests.forEach((r, i) => socket.write(frame(3 + 2 * i, r)));
  const deadline = Date.now() + 10_000;
  while (frames.filter((f) => f.stream > 1).length < requests.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  socket.destroy();
  return new Map(frames.filter((f) => f.stream > 1).map((f) => [f.stream, JSON.parse(f.payload.toString())]));
}

describe.skipIf(!ready)(`vmpod-agent: direct stdio requests (${ready ? 'root' : `needs root and ${AGENT_BINARY}`})`, () => {
  let agent: HostAgent;
  beforeAll(async () => {
    agent = await startHostAgent({ cgroups: false });
  });
  afterAll(async () => {
    expect(await agent?.cleanup()).toBe(0);
  });

  it('announces the direct-stdio feature', () => {
    expect(agent.client.info.features).toContain('direct-stdio');
  });

  it('refuses malformed direct streams with INVALID_ARGUMENT and a port that does not exist with NOT_FOUND, leaving nothing', async () => {
    const create = (direct: unknown, extra: { stdio?: unknown; process?: Record<string, unknown>; pidPath?: boolean } = {}) => {
      const config = minimalSpec(['true'], extra.process ?? {});
      if (extra.pidPath) config.linux!.namespaces = [{ type: 'pid', path: '/proc/1/ns/pid' }, { type: 'mount' }];
      return {
        method: 'CreateContainer',
        params: { id: uniqueId(), config, rootfs: agent.rootfs, direct, ...(extra.stdio === undefined ? {} : { stdio: extra.stdio }) },
      };
    };
    const good = { port: 'vmpod.stream.0', cookie: COOKIE };
    const invalid = [
      create('x'),
      create([]),
      create({ stdin: good }),
      create({ stdout: 'vmpod.stream.0' }),
      create({ stdout: { ...good, extra: 1 } }),
      create({ stdout: { cookie: COOKIE } }),
      create({ stdout: { port: 'vmpod.agent.0', cookie: COOKIE } }),
      create({ stdout: { port: 'vmpod.stream.100', cookie: COOKIE } }),
      create({ stdout: { port: 'vmpod.stream.1/../../x', cookie: COOKIE } }),
      create({ stdout: { port: 'vmpod.stream.\u00001', cookie: COOKIE } }),
      create({ stdout: { port: 'vmpod.stream.1', cookie: COOKIE.slice(2) } }),
      create({ stdout: { port: 'vmpod.stream.1', cookie: COOKIE.toUpperCase() } }),
      create({ stdout: { port: 'vmpod.stream.1', cookie: 'zz'.repeat(32) } }),
      create({ stdout: { port: 'vmpod.stream.1', cookie: 42 } }),
      create({ stdout: good, stderr: good }),
      create({ stdout: good }, { stdio: { stdout: false } }),
      create({ stdout: good }, { process: { terminal: true } }),
      create({ stdout: good }, { pidPath: true }),
    ];
    const missing = [create({ stdout: { port: 'vmpod.stream.7', cookie: COOKIE } })];
    const answers = await ask(agent.socket, [...invalid, ...missing]);
    expect(answers.size).toBe(invalid.length + missing.length);
    invalid.forEach((request, i) => {
      expect(answers.get(3 + 2 * i)?.error?.code, JSON.stringify(request.params.direct)).toBe('INVALID_ARGUMENT');
    });
    const notFound = answers.get(3 + 2 * invalid.length)?.error;
    expect(notFound?.code).toBe('NOT_FOUND');
    expect(notFound?.message).toContain('vmpod.stream.7');
    // Nothing was created, and the agent still runs containers.
    expect(await agent.client.listContainers()).toEqual([]);
    expect(fs.readdirSync(`${agent.stateDir}/containers`)).toEqual([]);
    const id = uniqueId();
    await agent.client.createContainer({ id, config: minimalSpec(['echo', 'fine']), rootfs: agent.rootfs });
    const { stdout } = await agent.client.openStdio(id, { stdout: true });
    await agent.client.startContainer(id);
    expect((await collect(stdout)).toString()).toBe('fine\n');
    // The end of stdout comes before the agent reaps the process: wait for the exit, then delete.
    expect(await agent.client.wait(id)).toEqual({ exitCode: 0, signal: 0, oomKilled: false });
    await agent.client.deleteContainer(id);
  });
});
