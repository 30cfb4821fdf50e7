// The agent's own decoder and request validation against hostile input from a host session:
// garbage, mutated frames, wrong types for every method, huge and nested payloads. The agent must
// answer with errors or drop the session, never crash, hang or grow, and keep serving others.
import net from 'node:net';
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FrameDecoder, FrameType, encodeFrame, type Frame } from '../../src/agent/framing.js';
import { AGENT_BINARY, collect, haveAgent, haveBusybox, isRoot, minimalSpec, startHostAgent, uniqueId, type HostAgent } from './agent-host.js';

const ready = isRoot && haveAgent && haveBusybox;

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A raw session: sends bytes, collects decoded frames until the agent hangs up or `ms` pass. */
async function rawSession(socketPath: string, bytes: Buffer[], ms = 300): Promise<{ frames: Frame[]; hungUp: boolean }> {
  const socket = net.createConnection({ path: socketPath });
  const decoder = new FrameDecoder();
  const frames: Frame[] = [];
  let hungUp = false;
  socket.on('data', (chunk: Buffer) => {
    try {
      frames.push(...decoder.push(chunk));
    } catch {
      // The agent never sends invalid frames; a failure here fails the assertion below.
      frames.push({ stream: -1, type: FrameType.Response, flags: 0, payload: Buffer.alloc(0) });
    }
  });
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const closed = new Promise<void>((resolve) => socket.once('close', () => ((hungUp = true), resolve())));
  socket.on('error', () => undefined);
  for (const b of bytes) socket.write(b);
  await Promise.race([closed, new Promise((r) => setTimeout(r, ms))]);
  socket.destroy();
  return { frames, hungUp };
}

const request = (stream: number, body: unknown) => encodeFrame(stream, FrameType.Request, 0, Buffer.from(typeof body === 'string' ? body : JSON.stringify(body)));
const hello = request(1, { method: 'Hello', params: { version: 1 } });

/** Every method of the protocol (docs/agent-protocol.md, "Methods"). */
const METHODS = [
  'Hello', 'Ping', 'CreateContainer', 'StartContainer', 'Exec', 'OpenStdio', 'Signal', 'Wait', 'ResizeTty', 'Stats', 'DeleteContainer',
  'ListContainers', 'Mount', 'FindDevice', 'Unmount', 'SetTime', 'ConfigureInterface', 'RemoveInterface', 'ListInterfaces', 'SetNetworkConfig', 'Shutdown',
];

/** The answers of a raw session, by stream id. */
function answersOf(frames: Frame[]): Map<number, { result?: Record<string, unknown>; error?: { code: string; message: string } }> {
  return new Map(frames.filter((f) => f.type === FrameType.Response && f.stream > 1).map((f) => [f.stream, JSON.parse(f.payload.toString())]));
}

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/u.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1]);
}

describe.skipIf(!ready)(`vmpod-agent under hostile input (${ready ? 'root' : `needs root and ${AGENT_BINARY}`})`, () => {
  let agent: HostAgent;
  beforeAll(async () => {
    agent = await startHostAgent({ cgroups: false });
  });
  afterAll(async () => {
    expect(await agent?.cleanup()).toBe(0);
  });

  it('answers wrong types and unknown fields in every method with INVALID_ARGUMENT, never INTERNAL', async () => {
    const methods = ['CreateContainer', 'StartContainer', 'Exec', 'OpenStdio', 'Signal', 'Wait', 'ResizeTty', 'Stats', 'DeleteContainer', 'Mount', 'Unmount', 'SetTime', 'FindDevice'];
    const badValues: unknown[] = [null, 1.5, -1, 2 ** 70, '', 'x'.repeat(300), '\u0000', [], {}, true, '../..', '/etc/passwd'];
    const fields = ['id', 'containerId', 'execId', 'bundle', 'config', 'rootfs', 'stdio', 'process', 'fd', 'signal', 'rows', 'cols', 'type', 'target', 'sec', 'nsec', 'device', 'options', 'overlay', 'pciPath', 'netdev', 'timeoutMs', 'bogus'];
    const next = rng(7);
    const bytes = [hello];
    let stream = 3;
    for (let i = 0; i < 600; i++) {
      const params: Record<string, unknown> = {};
      for (let j = 0; j < 1 + Math.floor(next() * 3); j++) params[fields[Math.floor(next() * fields.length)]!] = badValues[Math.floor(next() * badValues.length)];
      bytes.push(request(stream, { method: methods[Math.floor(next() * methods.length)], params }));
      stream += 2;
    }
    const { frames, hungUp } = await rawSession(agent.socket, bytes, 3000);
    expect(hungUp).toBe(false);
    const answers = frames.filter((f) => f.type === FrameType.Response && f.stream > 1);
    expect(answers).toHaveLength(600);
    for (const f of answers) {
      const body = JSON.parse(f.payload.toString()) as { error?: { code: string; message: string } };
      expect(body.error, f.payload.toString()).toBeDefined();
      expect(['INVALID_ARGUMENT', 'NOT_FOUND', 'PERMISSION_DENIED', 'FAILED_PRECONDITION'], f.payload.toString()).toContain(body.error!.code);
    }
  });

  it('serves every method and lists the features in Hello; an unknown method is UNIMPLEMENTED', async () => {
    const client = await agent.connect();
    expect(client.info.features).toEqual(['containers', 'exec', 'tty', 'stats', 'mount', 'mount-9p', 'set-time', 'oom', 'network', 'direct-stdio', 'rootfs-overlay', 'find-device']);
    // Each method reaches its handler, which refuses the bogus field (or the call); none is unknown.
    const names = [...METHODS, 'NoSuchMethod'];
    const { frames, hungUp } = await rawSession(agent.socket, [hello, ...names.map((method, i) => request(3 + 2 * i, { method, params: { bogus: 1 } }))], 1000);
    expect(hungUp).toBe(false);
    const answers = answersOf(frames);
    names.forEach((method, i) => {
      const answer = answers.get(3 + 2 * i);
      expect(answer?.error, method).toBeDefined();
      if (method === 'NoSuchMethod') expect(answer).toEqual({ error: { code: 'UNIMPLEMENTED', message: 'unknown method "NoSuchMethod"' } });
      else expect(answer!.error!.code, `${method}: ${answer!.error!.message}`).not.toBe('UNIMPLEMENTED');
    });
  });

  it('while shutting down, answers Hello, Ping, ListContainers and Wait only; anything else, unknown methods too, is FAILED_PRECONDITION', async () => {
    const other = await startHostAgent({ cgroups: false });
    try {
      const id = uniqueId();
      await other.client.createContainer({ id, config: minimalSpec(['sleep', '1000']), rootfs: other.rootfs, stdio: { stdout: false, stderr: false } });
      await other.client.startContainer(id);
      // One write: the agent reads every request after Shutdown in the same pass, before it has
      // reaped the container it killed, so all of them arrive while it shuts down.
      const after = [...METHODS, 'NoSuchMethod'];
      const params: Record<string, unknown> = { Hello: { version: 1 }, Wait: { containerId: id } };
      const bytes = [hello, request(3, { method: 'Shutdown' }), ...after.map((method, i) => request(5 + 2 * i, { method, params: params[method] ?? {} }))];
      const { frames } = await rawSession(other.socket, bytes, 8000);
      const answers = answersOf(frames);
      expect(answers.get(3)).toEqual({ result: {} });
      after.forEach((method, i) => {
        const answer = answers.get(5 + 2 * i);
        if (method === 'Hello') expect(answer?.result, method).toMatchObject({ version: 1 });
        else if (method === 'Ping') expect(answer, method).toEqual({ result: {} });
        else if (method === 'ListContainers') expect(answer?.result, method).toMatchObject({ containers: [{ id }] });
        else if (method === 'Wait') expect(answer, method).toEqual({ result: { exitCode: 137, signal: 9, oomKilled: false } });
        else expect(answer, method).toEqual({ error: { code: 'FAILED_PRECONDITION', message: 'the agent is shutting down' } });
      });
    } finally {
      expect(await other.cleanup()).toBe(0);
    }
  });

  it('drops sessions that send garbage, oversized, nested or out-of-order frames, and keeps serving', async () => {
    const next = rng(11);
    const rssBefore = rssKiB(agent.process.pid!);
    const cases: Buffer[][] = [
      [Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0])], // 4 GiB length
      [hello, request(1, { method: 'Ping' })], // stream id not increasing
      [encodeFrame(2, FrameType.Request, 0, Buffer.from('{}'))], // even stream id
      [hello, encodeFrame(3, 7 as FrameType, 0, Buffer.alloc(0))], // unknown type
      [hello, encodeFrame(5, FrameType.Data, 0, Buffer.from('x'))], // data for a stream never opened
      [hello, request(3, '['.repeat(500_000) + ']'.repeat(500_000))], // nesting
      [hello, request(3, '{"method":"Ping","params":' + '{"a":'.repeat(60) + '1' + '}'.repeat(60) + '}')],
      [hello, request(3, Buffer.from([0xc3, 0x28, 0xa0, 0xa1]).toString('latin1'))], // invalid UTF-8
      [request(1, { method: 'Ping' })], // no Hello
      [request(1, { method: 'Hello', params: { version: 99 } })],
    ];
    for (let i = 0; i < 200; i++) {
      const junk = Buffer.alloc(1 + Math.floor(next() * 5000));
      for (let j = 0; j < junk.length; j++) junk[j] = Math.floor(next() * 256);
      if (next() < 0.5) cases.push([junk]);
      else {
        const frame = Buffer.from(request(3, { method: 'Wait', params: { containerId: 'x' } }));
        for (let k = 0; k < 3; k++) frame[Math.floor(next() * frame.length)] = Math.floor(next() * 256);
        cases.push([hello, frame, junk]);
      }
    }
    let hangUps = 0;
    for (const bytes of cases) {
      const { frames, hungUp } = await rawSession(agent.socket, bytes, 100);
      if (hungUp) hangUps++;
      expect(frames.every((f) => f.stream >= 0)).toBe(true); // everything the agent sent decodes
    }
    expect(hangUps).toBeGreaterThan(cases.length / 3);
    // Still alive, still working, and not grown.
    expect(agent.process.exitCode).toBeNull();
    const client = await agent.connect();
    const id = uniqueId();
    await client.createContainer({ id, config: minimalSpec(['echo', 'still here']), rootfs: agent.rootfs });
    const { stdout } = await client.openStdio(id, { stdout: true });
    await client.startContainer(id);
    expect((await collect(stdout)).toString()).toBe('still here\n');
    await client.deleteContainer(id);
    expect(rssKiB(agent.process.pid!) - rssBefore).toBeLessThan(32 * 1024);
  });
});
