// ttRPC for the containerd shim: the frame codec, the server's answers to what a client can get
// wrong, the client, and a round trip of every Task API method through client ↔ server.
import { describe, expect, it } from 'vitest';
import { encodeFrame, FrameDecoder, FrameError, HEADER_LENGTH, MAX_PAYLOAD, MessageType } from '../../src/shim/ttrpc/frame.js';
import { TtrpcServer } from '../../src/shim/ttrpc/server.js';
import { TtrpcClient } from '../../src/shim/ttrpc/client.js';
import { GrpcCode, statusOf, TtrpcError } from '../../src/shim/ttrpc/status.js';
import { callTask, registerTaskApi, unimplementedTaskApi } from '../../src/shim/ttrpc/task.js';
import { decodeAny, decodeMessage, encodeAny, encodeMessage } from '../../src/shim/proto/index.js';
import { TASK_METHODS, TASK_SERVICE, type CallContext, type TaskApi } from '../../src/shim/proto/task-api.js';
import { InvalidArgumentError, NotFoundError, AbortError } from '../../src/errors.js';
import { duplexPair } from './shim-ttrpc-pair.js';

function header(length: number, streamId: number, type: number, flags = 0): Buffer {
  const h = Buffer.alloc(HEADER_LENGTH);
  h.writeUInt32BE(length, 0);
  h.writeUInt32BE(streamId, 4);
  h.writeUInt8(type, 8);
  h.writeUInt8(flags, 9);
  return h;
}

describe('ttRPC frame codec', () => {
  it('encodes the 10-byte big-endian header then the payload', () => {
    const bytes = encodeFrame({ streamId: 0x01020304, type: MessageType.RESPONSE, flags: 5, payload: Buffer.from('abc') });
    expect(bytes.toString('hex')).toBe('00000003' + '01020304' + '02' + '05' + Buffer.from('abc').toString('hex'));
  });

  it('decodes frames split at every possible boundary, headers included', () => {
    const frames = [
      { streamId: 1, type: 1, flags: 0, payload: Buffer.from('hello') },
      { streamId: 3, type: 2, flags: 1, payload: Buffer.alloc(0) },
      { streamId: 5, type: 3, flags: 4, payload: Buffer.from('x'.repeat(37)) },
    ];
    const wire = Buffer.concat(frames.map(encodeFrame));
    for (let cut1 = 0; cut1 <= wire.length; cut1++) {
      for (const cut2 of [cut1, Math.min(wire.length, cut1 + 3), Math.min(wire.length, cut1 + 11)]) {
        const decoder = new FrameDecoder();
        const got = [...decoder.push(wire.subarray(0, cut1)), ...decoder.push(wire.subarray(cut1, cut2)), ...decoder.push(wire.subarray(cut2))];
        expect(got).toEqual(frames);
        expect(decoder.buffered).toBe(0);
      }
    }
    // one byte at a time
    const decoder = new FrameDecoder();
    const got = [];
    for (const byte of wire) got.push(...decoder.push(Buffer.from([byte])));
    expect(got).toEqual(frames);
  });

  it('holds a partial header without producing a frame', () => {
    const decoder = new FrameDecoder();
    expect(decoder.push(header(4, 1, 1).subarray(0, 9))).toEqual([]);
    expect(decoder.buffered).toBe(9);
    expect(decoder.push(Buffer.from([0, 1, 2]))).toEqual([]);
    expect(decoder.push(Buffer.from([3, 4]))).toEqual([{ streamId: 1, type: 1, flags: 0, payload: Buffer.from([1, 2, 3, 4]) }]);
  });

  it('accepts a payload of exactly 4 MiB and refuses 4 MiB + 1 at the header, before any body', () => {
    const decoder = new FrameDecoder();
    expect(decoder.push(header(MAX_PAYLOAD, 1, 1))).toEqual([]);
    const frames = decoder.push(Buffer.alloc(MAX_PAYLOAD));
    expect(frames).toHaveLength(1);
    expect(frames[0]!.payload.length).toBe(MAX_PAYLOAD);

    const over = new FrameDecoder();
    expect(() => over.push(header(MAX_PAYLOAD + 1, 1, 1))).toThrow(FrameError);
    expect(over.buffered).toBe(0);
    // spent: later input is refused too
    expect(() => over.push(Buffer.alloc(1))).toThrow(FrameError);
    const huge = new FrameDecoder();
    expect(() => huge.push(header(0xffffffff, 1, 1))).toThrow(/over the ttRPC maximum/);
    expect(() => encodeFrame({ streamId: 1, type: 1, flags: 0, payload: Buffer.alloc(MAX_PAYLOAD + 1) })).toThrow(FrameError);
  });
});

function request(service: string, method: string, payload: Uint8Array, extra: { timeoutNano?: number; metadata?: { key: string; value: string }[] } = {}): Buffer {
  return encodeMessage('ttrpc.Request', { service, method, payload: Buffer.from(payload), timeoutNano: extra.timeoutNano ?? 0, metadata: extra.metadata ?? [] });
}

/** A raw peer of a server: writes frames, collects the response frames by stream id. */
function rawPeer(server: TtrpcServer) {
  const [ours, theirs] = duplexPair();
  server.handleConnection(theirs);
  const decoder = new FrameDecoder();
  const responses = new Map<number, { code: number; message: string; payload: Buffer }>();
  const order: number[] = [];
  let closed = false;
  const waiters: (() => void)[] = [];
  ours.on('data', (chunk: Buffer) => {
    for (const f of decoder.push(chunk)) {
      const r = decodeMessage<{ status: { code: number; message: string } | null; payload: Buffer }>('ttrpc.Response', f.payload);
      expect(f.type).toBe(MessageType.RESPONSE);
      responses.set(f.streamId, { code: r.status?.code ?? 0, message: r.status?.message ?? '', payload: r.payload });
      order.push(f.streamId);
    }
    for (const w of waiters.splice(0)) w();
  });
  ours.on('close', () => {
    closed = true;
    for (const w of waiters.splice(0)) w();
  });
  const until = async (cond: () => boolean): Promise<void> => {
    while (!cond()) await new Promise<void>((resolve) => waiters.push(resolve));
  };
  return {
    write: (b: Buffer) => ours.write(b),
    responses,
    order,
    isClosed: () => closed,
    until,
    response: async (id: number) => {
      await until(() => responses.has(id) || closed);
      return responses.get(id);
    },
    destroy: () => ours.destroy(),
  };
}

describe('ttRPC server', () => {
  const echo = (server: TtrpcServer): void => server.register('test.Echo', 'Echo', async (payload) => payload);

  it('answers each request with its stream id, in the order the handlers finish', async () => {
    const server = new TtrpcServer();
    const gates = new Map<string, () => void>();
    server.register('test.Echo', 'Slow', async (payload) => {
      await new Promise<void>((resolve) => gates.set(payload.toString(), resolve));
      return payload;
    });
    const peer = rawPeer(server);
    peer.write(encodeFrame({ streamId: 1, type: 1, flags: 0, payload: request('test.Echo', 'Slow', Buffer.from('a')) }));
    peer.write(encodeFrame({ streamId: 3, type: 1, flags: 0, payload: request('test.Echo', 'Slow', Buffer.from('b')) }));
    await new Promise<void>((resolve) => setImmediate(resolve));
    expect(gates.size).toBe(2); // both are being handled at once
    gates.get('b')!();
    expect((await peer.response(3))!.payload.toString()).toBe('b');
    gates.get('a')!();
    expect((await peer.response(1))!.payload.toString()).toBe('a');
    expect(peer.order).toEqual([3, 1]);
    peer.destroy();
  });

  it('UNIMPLEMENTED for an unknown service or method; INVALID_ARGUMENT for a garbage Request and an even stream id', async () => {
    const server = new TtrpcServer();
    echo(server);
    const peer = rawPeer(server);
    peer.write(encodeFrame({ streamId: 1, type: 1, flags: 0, payload: request('no.Such', 'Echo', Buffer.alloc(0)) }));
    peer.write(encodeFrame({ streamId: 3, type: 1, flags: 0, payload: request('test.Echo', 'Nope', Buffer.alloc(0)) }));
    peer.write(encodeFrame({ streamId: 5, type: 1, flags: 0, payload: Buffer.from([0xff, 0xff, 0xff, 0xff]) }));
    peer.write(encodeFrame({ streamId: 6, type: 1, flags: 0, payload: request('test.Echo', 'Echo', Buffer.from('x')) }));
    peer.write(encodeFrame({ streamId: 7, type: 1, flags: 0, payload: request('test.Echo', 'Echo', Buffer.from('still here')) }));
    expect(await peer.response(1)).toMatchObject({ code: GrpcCode.UNIMPLEMENTED, message: expect.stringContaining('no.Such') });
    expect(await peer.response(3)).toMatchObject({ code: GrpcCode.UNIMPLEMENTED, message: expect.stringContaining('Nope') });
    expect(await peer.response(5)).toMatchObject({ code: GrpcCode.INVALID_ARGUMENT });
    expect(await peer.response(6)).toMatchObject({ code: GrpcCode.INVALID_ARGUMENT, message: expect.stringContaining('odd') });
    expect((await peer.response(7))!.payload.toString()).toBe('still here');
    peer.destroy();
  });

  it('ignores data frames, refuses a stream id already in flight and lets the first one finish', async () => {
    const server = new TtrpcServer();
    let release!: () => void;
    server.register('test.Echo', 'Slow', async (payload) => {
      await new Promise<void>((resolve) => (release = resolve));
      return payload;
    });
    echo(server);
    const peer = rawPeer(server);
    peer.write(encodeFrame({ streamId: 9, type: 1, flags: 0, payload: request('test.Echo', 'Slow', Buffer.from('first')) }));
    peer.write(encodeFrame({ streamId: 11, type: MessageType.DATA, flags: 0, payload: Buffer.from('data') }));
    peer.write(encodeFrame({ streamId: 13, type: 7, flags: 0, payload: Buffer.from('unknown type') }));
    peer.write(encodeFrame({ streamId: 9, type: 1, flags: 0, payload: request('test.Echo', 'Echo', Buffer.from('second')) }));
    const dup = await peer.response(9);
    expect(dup).toMatchObject({ code: GrpcCode.INVALID_ARGUMENT, message: expect.stringContaining('already in use') });
    peer.responses.delete(9);
    release();
    expect((await peer.response(9))!.payload.toString()).toBe('first');
    expect(peer.responses.has(11)).toBe(false);
    expect(peer.responses.has(13)).toBe(false);
    peer.destroy();
  });

  it('closes the connection on a frame over 4 MiB, split header or not, and aborts the calls in flight', async () => {
    for (const split of [false, true]) {
      const server = new TtrpcServer();
      let signal: AbortSignal | undefined;
      server.register('test.Echo', 'Hang', (_p, ctx) => {
        signal = ctx.signal;
        return new Promise(() => {});
      });
      const peer = rawPeer(server);
      peer.write(encodeFrame({ streamId: 1, type: 1, flags: 0, payload: request('test.Echo', 'Hang', Buffer.alloc(0)) }));
      await new Promise<void>((resolve) => setImmediate(resolve));
      const bad = header(MAX_PAYLOAD + 1, 3, 1);
      if (split) {
        peer.write(bad.subarray(0, 3));
        await new Promise<void>((resolve) => setImmediate(resolve));
        expect(peer.isClosed()).toBe(false);
        peer.write(bad.subarray(3));
      } else peer.write(bad);
      await peer.until(() => peer.isClosed());
      expect(signal?.aborted).toBe(true);
      expect(server.connectionCount).toBe(0);
    }
  });

  it('aborts a handler at its deadline (timeout_nano) and answers DEADLINE_EXCEEDED', async () => {
    const server = new TtrpcServer();
    let signal: AbortSignal | undefined;
    server.register('test.Echo', 'Hang', (_p, ctx) => {
      signal = ctx.signal;
      return new Promise(() => {});
    });
    const peer = rawPeer(server);
    peer.write(encodeFrame({ streamId: 1, type: 1, flags: 0, payload: request('test.Echo', 'Hang', Buffer.alloc(0), { timeoutNano: 20e6 }) }));
    expect(await peer.response(1)).toMatchObject({ code: GrpcCode.DEADLINE_EXCEEDED });
    expect(signal?.aborted).toBe(true);
    peer.destroy();
  });

  it('maps handler errors to gRPC codes; the namespace and metadata reach the handler', async () => {
    const server = new TtrpcServer();
    const errors: Record<string, unknown> = {
      NotFound: new NotFoundError('task', 'x'),
      Invalid: new InvalidArgumentError('id', 'bad'),
      Aborted: new AbortError('boot'),
      Coded: new TtrpcError(GrpcCode.FAILED_PRECONDITION, 'not now'),
      Plain: new Error('boom'),
      Thrown: 'a string',
    };
    for (const [name, error] of Object.entries(errors)) server.register('test.Err', name, () => Promise.reject(error));
    let seen: CallContext | undefined;
    server.register('test.Err', 'Ctx', async (_p, ctx) => {
      seen = ctx;
      return Buffer.alloc(0);
    });
    const [a, b] = duplexPair();
    server.handleConnection(b);
    const client = new TtrpcClient(a);
    const codeOf = (name: string) => client.call('test.Err', name, Buffer.alloc(0)).then(() => 'ok', (e: TtrpcError) => [e.grpcCode, e.message]);
    expect(await codeOf('NotFound')).toEqual([GrpcCode.NOT_FOUND, 'task "x" does not exist']);
    expect(await codeOf('Invalid')).toEqual([GrpcCode.INVALID_ARGUMENT, 'id: bad']);
    expect(await codeOf('Aborted')).toEqual([GrpcCode.DEADLINE_EXCEEDED, 'boot was aborted']);
    expect(await codeOf('Coded')).toEqual([GrpcCode.FAILED_PRECONDITION, 'not now']);
    expect(await codeOf('Plain')).toEqual([GrpcCode.UNKNOWN, 'boom']);
    expect(await codeOf('Thrown')).toEqual([GrpcCode.UNKNOWN, 'a string']);
    await client.call('test.Err', 'Ctx', Buffer.alloc(0), { metadata: { 'containerd-namespace-ttrpc': 'k8s.io', other: ['1', '2'] } });
    expect(seen!.namespace).toBe('k8s.io');
    expect(seen!.metadata).toEqual({ 'containerd-namespace-ttrpc': ['k8s.io'], other: ['1', '2'] });
    await client.call('test.Err', 'Ctx', Buffer.alloc(0), { metadata: { 'containerd-namespace': 'grpc-key' } });
    expect(seen!.namespace).toBe('grpc-key');
    expect(seen!.signal.aborted).toBe(false);
    client.close();
    expect(statusOf(new TtrpcError(GrpcCode.ALREADY_EXISTS, 'dup')).code).toBe(GrpcCode.ALREADY_EXISTS);
  });

  it('answers requests already received after the peer half-closes, then ends', async () => {
    const server = new TtrpcServer();
    let release!: () => void;
    server.register('test.Echo', 'Slow', async (payload) => {
      await new Promise<void>((resolve) => (release = resolve));
      return payload;
    });
    const [ours, theirs] = duplexPair();
    server.handleConnection(theirs);
    const decoder = new FrameDecoder();
    const got: number[] = [];
    let ended = false;
    ours.on('data', (c: Buffer) => got.push(...decoder.push(c).map((f) => f.streamId)));
    ours.on('end', () => (ended = true));
    ours.write(encodeFrame({ streamId: 1, type: 1, flags: 0, payload: request('test.Echo', 'Slow', Buffer.from('z')) }));
    ours.end();
    await new Promise<void>((resolve) => setImmediate(resolve));
    release();
    await new Promise<void>((resolve) => ours.once('end', resolve));
    expect(got).toEqual([1]);
    expect(ended).toBe(true);
  });
});

describe('ttRPC client', () => {
  it('rejects calls still waiting when the connection closes, and later calls at once', async () => {
    const server = new TtrpcServer();
    server.register('test.Echo', 'Hang', () => new Promise(() => {}));
    const [a, b] = duplexPair();
    server.handleConnection(b);
    const client = new TtrpcClient(a);
    const waiting = client.call('test.Echo', 'Hang', Buffer.alloc(0));
    await new Promise<void>((resolve) => setImmediate(resolve));
    b.destroy();
    await expect(waiting).rejects.toMatchObject({ grpcCode: GrpcCode.UNAVAILABLE });
    await expect(client.call('test.Echo', 'Hang', Buffer.alloc(0))).rejects.toMatchObject({ grpcCode: GrpcCode.UNAVAILABLE });
    expect(client.closed).toBe(true);
  });

  it('times out a call with DEADLINE_EXCEEDED (and sends the timeout to the server)', async () => {
    const server = new TtrpcServer();
    server.register('test.Echo', 'Hang', () => new Promise(() => {}));
    const [a, b] = duplexPair();
    server.handleConnection(b);
    const client = new TtrpcClient(a);
    await expect(client.call('test.Echo', 'Hang', Buffer.alloc(0), { timeoutMs: 30 })).rejects.toMatchObject({ grpcCode: GrpcCode.DEADLINE_EXCEEDED });
    client.close();
  });

  it('uses odd, increasing stream ids', async () => {
    const [a, b] = duplexPair();
    const client = new TtrpcClient(a);
    const decoder = new FrameDecoder();
    const ids: number[] = [];
    b.on('data', (c: Buffer) => {
      for (const f of decoder.push(c)) {
        ids.push(f.streamId);
        b.write(encodeFrame({ streamId: f.streamId, type: 2, flags: 0, payload: encodeMessage('ttrpc.Response', { status: { code: 0 }, payload: Buffer.from('ok') }) }));
      }
    });
    for (let i = 0; i < 3; i++) expect((await client.call('s', 'm', Buffer.alloc(0))).toString()).toBe('ok');
    expect(ids).toEqual([1, 3, 5]);
    client.close();
  });
});

// A fake TaskApi that records each call and answers with a response made from the request, so
// that both directions of every method are checked field by field.
function recordingTaskApi(calls: { name: string; request: unknown; namespace: string | undefined }[]): TaskApi {
  const at = new Date(1_700_000_000_123);
  const rec = (name: string) => (r: unknown, ctx: CallContext) => {
    calls.push({ name, request: r, namespace: ctx.namespace });
    return r as Record<string, unknown>;
  };
  return {
    create: async (r, c) => (rec('create')(r, c), { pid: r.rootfs.length + 100 }),
    start: async (r, c) => (rec('start')(r, c), { pid: 4242 }),
    delete: async (r, c) => (rec('delete')(r, c), { pid: 7, exitStatus: 137, exitedAt: at }),
    exec: async (r, c) => (rec('exec')(r, c), {}),
    resizePty: async (r, c) => (rec('resizePty')(r, c), {}),
    closeIO: async (r, c) => (rec('closeIO')(r, c), {}),
    kill: async (r, c) => (rec('kill')(r, c), {}),
    wait: async (r, c) => (rec('wait')(r, c), { exitStatus: 3, exitedAt: at }),
    state: async (r, c) => (rec('state')(r, c), { id: r.id, bundle: '/b', pid: 9, status: 2, stdin: 'i', stdout: 'o', stderr: 'e', terminal: true, exitStatus: 0, exitedAt: null, execId: r.execId }),
    pids: async (r, c) => (rec('pids')(r, c), { processes: [{ pid: 1, info: null }, { pid: 2, info: encodeAny('types.containerd.io/x', { a: 1 }) }] }),
    pause: async (r, c) => (rec('pause')(r, c), {}),
    resume: async (r, c) => (rec('resume')(r, c), {}),
    update: async (r, c) => (rec('update')(r, c), {}),
    stats: async (r, c) => (rec('stats')(r, c), { stats: encodeAny('io.containerd.cgroups.v2.Metrics', { pids: { current: 3, limit: 10 }, memory: { usage: 2 ** 40 } }) }),
    connect: async (r, c) => (rec('connect')(r, c), { shimPid: 11, taskPid: 12, version: 'v2' }),
    shutdown: async (r, c) => (rec('shutdown')(r, c), {}),
    checkpoint: async () => {
      throw new TtrpcError(GrpcCode.UNIMPLEMENTED, 'checkpoint is not supported');
    },
  };
}

describe('Task API over ttRPC', () => {
  it('round-trips every method: requests decoded as task-api.ts says, responses encoded back', async () => {
    const calls: { name: string; request: unknown; namespace: string | undefined }[] = [];
    const server = new TtrpcServer();
    registerTaskApi(server, recordingTaskApi(calls));
    const [a, b] = duplexPair();
    server.handleConnection(b);
    const client = new TtrpcClient(a);
    const opts = { metadata: { 'containerd-namespace-ttrpc': 'ns1' } };
    const mount = { type: 'overlay', source: 'overlay', target: '', options: ['lowerdir=/a', 'upperdir=/b'] };
    const spec = encodeAny('types.containerd.io/opencontainers/runtime-spec/1/Process', { args: ['sh'], cwd: '/' });
    const resources = encodeAny('types.containerd.io/opencontainers/runtime-spec/1/LinuxResources', { memory: { limit: 1 << 30 } });
    const at = new Date(1_700_000_000_123);

    expect(await callTask(client, 'Create', { id: 'c1', bundle: '/run/b', rootfs: [mount], terminal: true, stdin: '/f/in', stdout: '/f/out', stderr: '', options: null }, opts)).toEqual({ pid: 101 });
    expect(await callTask(client, 'Start', { id: 'c1', execId: 'e' }, opts)).toEqual({ pid: 4242 });
    expect(await callTask(client, 'Delete', { id: 'c1' }, opts)).toEqual({ pid: 7, exitStatus: 137, exitedAt: at });
    expect(await callTask(client, 'Exec', { id: 'c1', execId: 'e1', terminal: false, stdin: '', stdout: 'o', stderr: 'e', spec }, opts)).toEqual({});
    expect(await callTask(client, 'ResizePty', { id: 'c1', execId: 'e1', width: 80, height: 24 }, opts)).toEqual({});
    expect(await callTask(client, 'CloseIO', { id: 'c1', stdin: true }, opts)).toEqual({});
    expect(await callTask(client, 'Kill', { id: 'c1', signal: 9, all: true }, opts)).toEqual({});
    expect(await callTask(client, 'Wait', { id: 'c1' }, opts)).toEqual({ exitStatus: 3, exitedAt: at });
    expect(await callTask(client, 'State', { id: 'c1', execId: 'e1' }, opts)).toEqual({ id: 'c1', bundle: '/b', pid: 9, status: 2, stdin: 'i', stdout: 'o', stderr: 'e', terminal: true, exitStatus: 0, exitedAt: null, execId: 'e1' });
    const pids = await callTask(client, 'Pids', { id: 'c1' }, opts);
    expect(pids.processes.map((p) => p.pid)).toEqual([1, 2]);
    expect(pids.processes[0]!.info).toBeNull();
    expect(decodeAny(pids.processes[1]!.info!)).toEqual({ a: 1 });
    expect(await callTask(client, 'Pause', { id: 'c1' }, opts)).toEqual({});
    expect(await callTask(client, 'Resume', { id: 'c1' }, opts)).toEqual({});
    expect(await callTask(client, 'Update', { id: 'c1', resources, annotations: { 'a.b': 'c' } }, opts)).toEqual({});
    const stats = await callTask(client, 'Stats', { id: 'c1' }, opts);
    expect(stats.stats!.typeUrl).toBe('io.containerd.cgroups.v2.Metrics');
    expect(decodeAny<{ pids: { current: number }; memory: { usage: number } }>(stats.stats!)).toMatchObject({ pids: { current: 3, limit: 10 }, memory: { usage: 2 ** 40 } });
    expect(await callTask(client, 'Connect', { id: 'c1' }, opts)).toEqual({ shimPid: 11, taskPid: 12, version: 'v2' });
    expect(await callTask(client, 'Shutdown', { id: 'c1', now: true }, opts)).toEqual({});
    await expect(callTask(client, 'Checkpoint', { id: 'c1', path: '/x' }, opts)).rejects.toMatchObject({ grpcCode: GrpcCode.UNIMPLEMENTED, message: 'checkpoint is not supported' });

    const byName = Object.fromEntries(calls.map((c) => [c.name, c.request]));
    expect(calls.every((c) => c.namespace === 'ns1')).toBe(true);
    expect(Object.keys(byName).sort()).toEqual(Object.values(TASK_METHODS).map((m) => m.handler).filter((h) => h !== 'checkpoint').sort());
    expect(byName['create']).toEqual({ id: 'c1', bundle: '/run/b', rootfs: [mount], terminal: true, stdin: '/f/in', stdout: '/f/out', stderr: '', checkpoint: '', parentCheckpoint: '', options: null });
    expect(byName['start']).toEqual({ id: 'c1', execId: 'e' });
    expect(byName['delete']).toEqual({ id: 'c1', execId: '' });
    expect(byName['exec']).toMatchObject({ id: 'c1', execId: 'e1', terminal: false, stdin: '', stdout: 'o', stderr: 'e' });
    expect(decodeAny((byName['exec'] as { spec: { typeUrl: string; value: Buffer } }).spec)).toEqual({ args: ['sh'], cwd: '/' });
    expect(byName['resizePty']).toEqual({ id: 'c1', execId: 'e1', width: 80, height: 24 });
    expect(byName['closeIO']).toEqual({ id: 'c1', execId: '', stdin: true });
    expect(byName['kill']).toEqual({ id: 'c1', execId: '', signal: 9, all: true });
    expect(byName['wait']).toEqual({ id: 'c1', execId: '' });
    expect(byName['state']).toEqual({ id: 'c1', execId: 'e1' });
    expect(byName['pids']).toEqual({ id: 'c1' });
    expect(byName['pause']).toEqual({ id: 'c1' });
    expect(byName['resume']).toEqual({ id: 'c1' });
    const update = byName['update'] as { id: string; resources: { typeUrl: string; value: Buffer }; annotations: Record<string, string> };
    expect(update.annotations).toEqual({ 'a.b': 'c' });
    expect(update.resources.typeUrl).toBe('types.containerd.io/opencontainers/runtime-spec/1/LinuxResources');
    expect(decodeAny(update.resources)).toEqual({ memory: { limit: 1 << 30 } });
    expect(byName['stats']).toEqual({ id: 'c1' });
    expect(byName['connect']).toEqual({ id: 'c1' });
    expect(byName['shutdown']).toEqual({ id: 'c1', now: true });
    client.close();
  });

  it('the interim TaskApi answers UNIMPLEMENTED to every method; a bad request payload is INVALID_ARGUMENT', async () => {
    const server = new TtrpcServer();
    registerTaskApi(server, unimplementedTaskApi());
    const [a, b] = duplexPair();
    server.handleConnection(b);
    const client = new TtrpcClient(a);
    for (const method of Object.keys(TASK_METHODS) as (keyof typeof TASK_METHODS)[]) {
      await expect(callTask(client, method, {})).rejects.toMatchObject({ grpcCode: GrpcCode.UNIMPLEMENTED });
    }
    await expect(client.call(TASK_SERVICE, 'Create', Buffer.from([0x0a, 0x05, 0x61]))).rejects.toMatchObject({ grpcCode: GrpcCode.INVALID_ARGUMENT });
    client.close();
  });
});

describe('protobuf helpers', () => {
  it('event Anys carry the bare type URL and decode back, Timestamps as Dates', () => {
    const at = new Date(1_700_000_000_500);
    const any = encodeAny('containerd.events.TaskExit', { containerId: 'c', id: 'c', pid: 5, exitStatus: 137, exitedAt: at });
    expect(any.typeUrl).toBe('containerd.events.TaskExit');
    expect(decodeAny(any)).toEqual({ containerId: 'c', id: 'c', pid: 5, exitStatus: 137, exitedAt: at });
    expect(decodeAny({ typeUrl: 'types.googleapis.com/containerd.events.TaskOOM', value: encodeMessage('containerd.events.TaskOOM', { containerId: 'x' }) })).toEqual({ containerId: 'x' });
    expect(() => decodeAny({ typeUrl: 'no.such.Type', value: Buffer.alloc(0) })).toThrow(InvalidArgumentError);
    expect(() => decodeAny({ typeUrl: 'types.containerd.io/x', value: Buffer.from('{') })).toThrow(InvalidArgumentError);
  });

  it('DeleteResponse bytes are the ones containerd decodes: pid 1, exit_status 2, exited_at 3', () => {
    const bytes = encodeMessage('containerd.task.v2.DeleteResponse', { pid: 0, exitStatus: 137, exitedAt: new Date(1_700_000_000_123) });
    // field 2 varint 137 = 0x10 0x89 0x01; field 3 length-delimited Timestamp {seconds 1700000000, nanos 123000000}
    expect(bytes.includes(Buffer.from([0x10, 0x89, 0x01]))).toBe(true);
    const ts = encodeMessage('google.protobuf.Timestamp', { seconds: 1_700_000_000, nanos: 123_000_000 });
    expect(bytes.includes(Buffer.concat([Buffer.from([0x1a, ts.length]), ts]))).toBe(true);
  });
});
