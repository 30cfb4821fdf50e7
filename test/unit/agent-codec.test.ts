import { describe, expect, it, vi } from 'vitest';
import { AgentClient } from '../../src/agent/client.js';
import { AgentClosedError, AgentError, AgentProtocolError } from '../../src/agent/errors.js';
import {
  FLAG_CLOSE,
  FLAG_WINDOW,
  FrameDecoder,
  FrameType,
  HEADER_SIZE,
  INITIAL_WINDOW,
  MAX_PAYLOAD,
  encodeFrame,
} from '../../src/agent/framing.js';
import { InvalidArgumentError, TimeoutError, AbortError } from '../../src/errors.js';
import { FakeAgent, VALID_INFO, settled } from './agent-fake.js';

function header(length: number, stream: number, type: number, flags: number): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  b.writeUInt32BE(length, 0);
  b.writeUInt32BE(stream, 4);
  b.writeUInt8(type, 8);
  b.writeUInt8(flags, 9);
  return b;
}

describe('agent framing', () => {
  it('encodes the ttRPC header big-endian', () => {
    const f = encodeFrame(7, FrameType.Request, 0, Buffer.from('{}'));
    expect([...f.subarray(0, HEADER_SIZE)]).toEqual([0, 0, 0, 2, 0, 0, 0, 7, 1, 0]);
    expect(f.subarray(HEADER_SIZE).toString()).toBe('{}');
  });

  it('decodes frames split at every byte boundary and coalesced', () => {
    const frames = [
      encodeFrame(1, FrameType.Response, 0, Buffer.from('{"result":{}}')),
      encodeFrame(3, FrameType.Data, 0, Buffer.from('hello')),
      encodeFrame(3, FrameType.Data, FLAG_CLOSE),
      encodeFrame(5, FrameType.Data, FLAG_WINDOW, Buffer.from([0, 1, 0, 0])),
    ];
    const all = Buffer.concat(frames);
    for (let split = 0; split <= all.length; split++) {
      const d = new FrameDecoder();
      const out = [...d.push(all.subarray(0, split)), ...d.push(all.subarray(split))];
      expect(out.map((f) => [f.stream, f.type, f.flags, f.payload.toString('hex')])).toEqual([
        [1, 2, 0, Buffer.from('{"result":{}}').toString('hex')],
        [3, 3, 0, Buffer.from('hello').toString('hex')],
        [3, 3, FLAG_CLOSE, ''],
        [5, 3, FLAG_WINDOW, '00010000'],
      ]);
      expect(d.buffered).toBe(0);
    }
    // One byte at a time.
    const d = new FrameDecoder();
    const out = [];
    for (const byte of all) out.push(...d.push(Buffer.from([byte])));
    expect(out).toHaveLength(4);
  });

  it('rejects an oversized length as soon as the header arrives, without buffering the payload', () => {
    const d = new FrameDecoder();
    expect(() => d.push(header(MAX_PAYLOAD + 1, 1, FrameType.Response, 0))).toThrow(AgentProtocolError);
    expect(() => new FrameDecoder().push(header(0xffffffff, 1, FrameType.Data, 0))).toThrow(/exceeds the maximum/);
  });

  it('rejects request frames, unknown types, even streams and unknown flags from the agent', () => {
    const bad = [
      header(0, 1, FrameType.Request, 0),
      header(0, 1, 9, 0),
      header(0, 2, FrameType.Response, 0),
      header(0, 4, FrameType.Data, 0),
      header(0, 0, FrameType.Data, 0),
      header(0, 1, FrameType.Response, 1),
      header(0, 1, FrameType.Data, 0x40),
      header(0, 1, FrameType.Data, FLAG_CLOSE | FLAG_WINDOW),
      header(3, 1, FrameType.Data, FLAG_WINDOW),
      header(2, 1, FrameType.Data, FLAG_CLOSE),
    ];
    for (const h of bad) expect(() => new FrameDecoder().push(h), h.toString('hex')).toThrow(AgentProtocolError);
  });
});

describe('AgentClient against a scripted agent', () => {
  it('handshakes and exposes what the agent said', async () => {
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport);
    expect(client.info).toEqual(VALID_INFO);
    expect(fake.requests[0]).toMatchObject({ stream: 1, method: 'Hello', params: { version: 1 } });
    client.close();
  });

  it('turns an agent error response into an AgentError with its code', async () => {
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport);
    fake.onRequest = (r) => fake.respondError(r.stream, 'NOT_FOUND', 'container "x" does not exist');
    const error = await client.wait('x').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AgentError);
    expect(error).toMatchObject({ agentCode: 'NOT_FOUND', method: 'Wait', code: 'ERR_VMPOD_AGENT' });
    expect(client.closed).toBe(false);
    client.close();
  });

  it('fails the handshake on a version mismatch, a timeout or an abort', async () => {
    const mismatch = new FakeAgent({ answerHello: false });
    mismatch.onRequest = (r) => mismatch.respondError(r.stream, 'FAILED_PRECONDITION', 'protocol version 1 is not supported');
    await expect(AgentClient.connect(mismatch.transport)).rejects.toMatchObject({ agentCode: 'FAILED_PRECONDITION' });
    expect(mismatch.transport.destroyed).toBe(true);

    const silent = new FakeAgent({ answerHello: false });
    await expect(AgentClient.connect(silent.transport, { timeoutMs: 20 })).rejects.toBeInstanceOf(TimeoutError);

    const aborted = new FakeAgent({ answerHello: false });
    const controller = new AbortController();
    const promise = AgentClient.connect(aborted.transport, { signal: controller.signal });
    controller.abort();
    await expect(promise).rejects.toBeInstanceOf(AbortError);
  });

  it('validates inputs before sending anything', async () => {
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport);
    await expect(client.createContainer({ id: '../x', bundle: '/b' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(client.createContainer({ id: 'a/b', bundle: '/b' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(client.createContainer({ id: 'ok', bundle: 'relative' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(client.createContainer({ id: 'ok' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(client.createContainer({ id: 'ok', config: {} as never, rootfs: 'builtin', overlay: true })).rejects.toThrow(/^overlay: needs a rootfs path/u);
    await expect(client.createContainer({ id: 'ok', config: {} as never, overlay: true })).rejects.toThrow(/^overlay: /u);
    await expect(client.createContainer({ id: 'ok', config: {} as never, rootfs: '/r', overlay: 'yes' as never })).rejects.toThrow(/^overlay: must be true or false/u);
    await expect(client.resizeTty('ok', { rows: 0, cols: 80 })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(client.signal('ok', 'SIGNOPE' as NodeJS.Signals)).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(fake.requests).toHaveLength(1); // only Hello
    client.close();
  });

  it('drops a late answer to an aborted call but treats a never-used stream as a violation', async () => {
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport);
    const controller = new AbortController();
    const pending = client.wait('c1', { signal: controller.signal });
    controller.abort();
    await expect(pending).rejects.toBeInstanceOf(AbortError);
    fake.respond(fake.requests[1]!.stream, { exitCode: 0, signal: 0, oomKilled: false });
    await new Promise((r) => setImmediate(r));
    expect(client.closed).toBe(false);
    const closed = new Promise<Error | undefined>((r) => client.once('close', r));
    fake.respond(1001, {});
    expect(await closed).toBeInstanceOf(AgentProtocolError);
  });

  it('rejects pending calls with AgentClosedError when the agent hangs up mid-frame', async () => {
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport);
    const pending = client.listContainers();
    fake.send(encodeFrame(3, FrameType.Response, 0, Buffer.from('{"result":{"containers":[]}}')).subarray(0, 15));
    fake.end();
    await expect(pending).rejects.toBeInstanceOf(AgentClosedError);
  });

  it('checks every result against its schema', async () => {
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport);
    fake.onRequest = (r) => fake.respond(r.stream, { exitCode: 'zero', signal: 0, oomKilled: false });
    const error = await client.wait('c1').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AgentProtocolError);
    expect(String(error)).toMatch(/Wait\.result\.exitCode: must be an integer/);
    expect(client.closed).toBe(true);
  });

  it('strips unknown keys, including __proto__, from results', async () => {
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport);
    fake.onRequest = (r) =>
      fake.send(
        encodeFrame(
          r.stream,
          FrameType.Response,
          0,
          Buffer.from('{"result":{"exitCode":1,"signal":0,"oomKilled":false,"__proto__":{"polluted":true},"extra":1}}'),
        ),
      );
    const status = await client.wait('c1');
    expect(status).toEqual({ exitCode: 1, signal: 0, oomKilled: false });
    expect(({} as Record<string, unknown>)['polluted']).toBeUndefined();
    client.close();
  });

  it('streams stdout with credit: grants more only as the reader consumes', async () => {
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport);
    fake.onRequest = (r) => fake.respond(r.stream, {});
    const { stdout } = await client.openStdio('c1', { stdout: true });
    const stream = fake.requests[1]!.stream;
    // Fill the initial window without reading: no credit may come back beyond what was consumed.
    const chunk = Buffer.alloc(64 * 1024, 7);
    for (let sent = 0; sent < INITIAL_WINDOW; sent += chunk.length) fake.sendData(stream, chunk);
    await new Promise((r) => setImmediate(r));
    const granted = () =>
      fake.data.filter((d) => d.stream === stream && d.flags === FLAG_WINDOW).reduce((n, d) => n + d.payload.readUInt32BE(0), 0);
    const before = granted();
    expect(before).toBeLessThan(INITIAL_WINDOW);
    // One byte beyond the credit is a violation.
    const closed = new Promise<Error | undefined>((r) => client.once('close', r));
    for (let left = INITIAL_WINDOW - before; left > 0; left -= 65536) fake.sendData(stream, Buffer.alloc(Math.min(left, 65536)));
    fake.sendData(stream, Buffer.alloc(1));
    expect(await closed).toBeInstanceOf(AgentProtocolError);
    stdout!.on('error', () => {});
  });

  it('delivers stdout in order and ends it on the close flag', async () => {
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport);
    fake.onRequest = (r) => fake.respond(r.stream, {});
    const { stdout } = await client.openStdio('c1', { stdout: true });
    const stream = fake.requests[1]!.stream;
    const received: Buffer[] = [];
    stdout!.on('data', (b: Buffer) => received.push(b));
    const ended = new Promise((r) => stdout!.on('end', r));
    const granted = () =>
      INITIAL_WINDOW + fake.data.filter((d) => d.flags === FLAG_WINDOW).reduce((n, d) => n + d.payload.readUInt32BE(0), 0);
    let expected = Buffer.alloc(0);
    for (let i = 0; i < 40; i++) {
      const b = Buffer.alloc(32 * 1024, i);
      // Like the agent: send only within the credit the client has granted so far.
      while (expected.length + b.length > granted()) await new Promise((r) => setImmediate(r));
      expected = Buffer.concat([expected, b]);
      fake.sendData(stream, b);
    }
    fake.sendData(stream, Buffer.alloc(0), FLAG_CLOSE);
    await ended;
    expect(Buffer.concat(received).equals(expected)).toBe(true);
    client.close();
  });

  it('sends stdin within the window, waits for credit, and ends with the close flag', async () => {
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport);
    fake.onRequest = (r) => fake.respond(r.stream, {});
    const { stdin } = await client.openStdio('c1', { stdin: true });
    const stream = fake.requests[1]!.stream;
    const big = Buffer.alloc(INITIAL_WINDOW + 1000, 1);
    const written = new Promise((r) => stdin!.write(big, r));
    await new Promise((r) => setImmediate(r));
    const sentBytes = () => fake.data.filter((d) => d.stream === stream && d.flags === 0).reduce((n, d) => n + d.payload.length, 0);
    expect(sentBytes()).toBe(INITIAL_WINDOW);
    expect(fake.data.every((d) => d.payload.length <= 65536)).toBe(true);
    const w = Buffer.alloc(4);
    w.writeUInt32BE(4096);
    fake.sendData(stream, w, FLAG_WINDOW);
    await written;
    expect(sentBytes()).toBe(INITIAL_WINDOW + 1000);
    await new Promise<void>((r) => stdin!.end(r));
    expect(fake.data.at(-1)).toMatchObject({ stream, flags: FLAG_CLOSE });
    client.close();
  });

  it('fails a stdin write still waiting for credit when the connection goes, instead of reporting it sent', async () => {
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport);
    fake.onRequest = (r) => fake.respond(r.stream, {});
    const { stdin } = await client.openStdio('c1', { stdin: true });
    stdin!.on('error', () => undefined);
    const written = new Promise<Error | null | undefined>((r) => stdin!.write(Buffer.alloc(INITIAL_WINDOW + 4096, 1), r));
    await new Promise((r) => setImmediate(r));
    fake.end(); // the guest hangs up: 4096 bytes never left
    expect(await written).toBeInstanceOf(AgentClosedError);
  });
});

describe('AgentClient deadlines', () => {
  it('gives every call the connection deadline (callTimeoutMs) when it sets none of its own', async () => {
    const fake = new FakeAgent(); // answers Hello, then nothing
    const client = await AgentClient.connect(fake.transport, { callTimeoutMs: 100 });
    const started = Date.now();
    const outcome = await settled(client.ping(), 2000);
    expect(outcome).toHaveProperty('error');
    const error = (outcome as { error: unknown }).error;
    expect(error).toBeInstanceOf(TimeoutError);
    expect(error).toMatchObject({ timeoutMs: 100, code: 'ERR_VMPOD_TIMEOUT' });
    expect(String(error)).toMatch(/Ping/);
    expect(Date.now() - started).toBeLessThan(2000);
    expect(client.closed).toBe(false); // a slow guest is not a broken protocol
    client.close();
  });

  it('defaults the deadline to 30 s', async () => {
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport);
    // Only setTimeout is faked: the in-memory transport runs on nextTick and setImmediate.
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    let error: unknown;
    let early: unknown;
    try {
      void client.stats('c1').catch((e: unknown) => (error = e));
      await vi.advanceTimersByTimeAsync(29_999);
      early = error;
      await vi.advanceTimersByTimeAsync(1);
    } finally {
      vi.useRealTimers(); // before anything can fail: later tests need real timers
    }
    await new Promise((r) => setImmediate(r));
    client.close();
    expect(early).toBeUndefined();
    expect(error).toBeInstanceOf(TimeoutError);
    expect(error).toMatchObject({ timeoutMs: 30_000 });
    expect(String(error)).toMatch(/Stats/);
  });

  it('lets a call set its own timeoutMs, shorter or longer than the connection deadline', async () => {
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport, { callTimeoutMs: 10_000 });
    await expect(client.listContainers({ timeoutMs: 50 })).rejects.toMatchObject({ timeoutMs: 50 });
    const short = await AgentClient.connect(new FakeAgent().transport, { callTimeoutMs: 50 });
    const longer = client.ping({ timeoutMs: 400 });
    const shortCall = short.ping();
    await expect(shortCall).rejects.toMatchObject({ timeoutMs: 50 });
    await expect(longer).rejects.toMatchObject({ timeoutMs: 400 });
    client.close();
    short.close();
  });

  it('refuses a deadline that is not a number of milliseconds', async () => {
    await expect(AgentClient.connect(new FakeAgent().transport, { callTimeoutMs: 0 })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(AgentClient.connect(new FakeAgent().transport, { callTimeoutMs: Infinity })).rejects.toBeInstanceOf(InvalidArgumentError);
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport);
    for (const timeoutMs of [-1, Number.NaN, Infinity, 2 ** 31]) {
      await expect(client.ping({ timeoutMs })).rejects.toBeInstanceOf(InvalidArgumentError);
    }
    expect(fake.requests).toHaveLength(1);
    client.close();
  });

  it('waits for an exit without a default deadline, until the answer, its own timeoutMs or the end of the connection', async () => {
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport, { callTimeoutMs: 50 });
    const waiting = client.wait('c1');
    expect(await settled(waiting, 300)).toBe('pending'); // six call deadlines later
    fake.respond(fake.requests.at(-1)!.stream, { exitCode: 3, signal: 0, oomKilled: false });
    await expect(waiting).resolves.toEqual({ exitCode: 3, signal: 0, oomKilled: false });
    await expect(client.wait('c1', { timeoutMs: 50 })).rejects.toMatchObject({ timeoutMs: 50 });
    const forever = client.wait('c2');
    client.close();
    await expect(forever).rejects.toBeInstanceOf(AgentClosedError);
  });

  it('adds the wait a request asks of the agent (Mount, FindDevice, ConfigureInterface) to the default deadline', async () => {
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport, { callTimeoutMs: 100 });
    const calls = [
      client.findDevice({ pciPath: '02/00', timeoutMs: 200 }),
      client.mount({ type: 'ext4', device: { serial: 'vol' }, target: '/run/vmpod/vol', timeoutMs: 150 }),
      client.configureInterface({ mac: '02:00:00:00:00:01', name: 'eth0', timeoutMs: 50 }),
    ];
    const errors = await Promise.all(calls.map((p) => p.catch((e: unknown) => e)));
    expect(errors.map((e) => (e as TimeoutError).timeoutMs)).toEqual([300, 250, 150]);
    for (const e of errors) expect(e).toBeInstanceOf(TimeoutError);
    // Without a timeoutMs in the request, the agent's own default (10 s) is added.
    const pending = client.findDevice({ pciPath: '02/00' });
    expect(await settled(pending, 300)).toBe('pending');
    client.close();
    await expect(pending).rejects.toBeInstanceOf(AgentClosedError);
  });

  it('drops a late answer to a timed-out call, still treats a never-used stream as a violation', async () => {
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport, { callTimeoutMs: 50 });
    await expect(client.stats('c1')).rejects.toBeInstanceOf(TimeoutError);
    const late = fake.requests.at(-1)!.stream;
    fake.respond(late, { containerId: 'c1', timestamp: 1, cpu: {}, memory: {}, pids: {} });
    fake.respondError(late, 'INTERNAL', 'late and repeated');
    await new Promise((r) => setImmediate(r));
    expect(client.closed).toBe(false);
    fake.onRequest = (r) => fake.respond(r.stream, {});
    await client.ping(); // still in step with the agent
    const closed = new Promise<Error | undefined>((r) => client.once('close', r));
    fake.respond(late + 100, {});
    expect(await closed).toBeInstanceOf(AgentProtocolError);
  });

  it('detaches the streams of an OpenStdio that timed out, and drops what comes on them later', async () => {
    const fake = new FakeAgent();
    const client = await AgentClient.connect(fake.transport, { callTimeoutMs: 50 });
    await expect(client.openStdio('c1', { stdout: true })).rejects.toBeInstanceOf(TimeoutError);
    const stream = fake.requests.at(-1)!.stream;
    await new Promise((r) => setImmediate(r));
    expect(fake.data.at(-1)).toMatchObject({ stream, flags: FLAG_CLOSE }); // the agent is told to detach
    fake.respond(stream, {});
    fake.sendData(stream, Buffer.from('late output'));
    fake.sendData(stream, Buffer.alloc(0), FLAG_CLOSE);
    await new Promise((r) => setImmediate(r));
    expect(client.closed).toBe(false);
    client.close();
  });
});
