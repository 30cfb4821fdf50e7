// The shim's event publisher against a fake containerd Events service (a ttRPC server on a unix
// socket in a temporary directory): envelopes, order, containerd away and back, refusals, limits.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { EventPublisher, EVENTS_SERVICE } from '../../src/shim/events.js';
import type { ShimLog } from '../../src/shim/log.js';
import { decodeAny, decodeMessage } from '../../src/shim/proto/index.js';
import { TtrpcServer } from '../../src/shim/ttrpc/server.js';
import { GrpcCode, TtrpcError } from '../../src/shim/ttrpc/status.js';

interface Received {
  topic: string;
  namespace: string;
  typeUrl: string;
  event: Record<string, unknown>;
  timestamp: Date;
  metadataNamespace: string | undefined;
}

async function fakeContainerd(socket: string, answer?: (r: Received) => void): Promise<{ got: Received[]; server: TtrpcServer }> {
  const got: Received[] = [];
  const server = new TtrpcServer();
  server.register(EVENTS_SERVICE, 'Forward', async (payload, ctx) => {
    const { envelope } = decodeMessage<{ envelope: { timestamp: Date; namespace: string; topic: string; event: { typeUrl: string; value: Buffer } } }>('containerd.services.events.ttrpc.v1.ForwardRequest', payload);
    const r = { topic: envelope.topic, namespace: envelope.namespace, typeUrl: envelope.event.typeUrl, event: decodeAny(envelope.event), timestamp: envelope.timestamp, metadataNamespace: ctx.namespace };
    answer?.(r);
    got.push(r);
    return Buffer.alloc(0);
  });
  await server.listen(socket);
  return { got, server };
}

function memoryLog(): ShimLog & { lines: string[] } {
  const lines: string[] = [];
  return { lines, debug: (m) => lines.push(`debug ${m}`), info: (m) => lines.push(`info ${m}`), warn: (m) => lines.push(`warn ${m}`), error: (m) => lines.push(`error ${m}`) };
}

let dir: string;
let socket: string;
const cleanups: (() => Promise<void> | void)[] = [];
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-shimw-events-'));
  socket = path.join(dir, 'ttrpc.sock');
});
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('EventPublisher', () => {
  it('forwards envelopes in order with the namespace, topic, a bare type URL and the event', async () => {
    const fake = await fakeContainerd(socket);
    cleanups.push(() => fake.server.close());
    const log = memoryLog();
    const publisher = new EventPublisher({ ttrpcAddress: `unix://${socket}`, namespace: 'k8s.io', log });
    cleanups.push(() => publisher.close());
    const before = Date.now();
    publisher.publish('/tasks/create', 'containerd.events.TaskCreate', { containerId: 'c1', bundle: '/b', rootfs: [{ type: 'overlay', source: 'overlay', target: '', options: ['x'] }], io: { stdin: '', stdout: '/o', stderr: '/e', terminal: false }, pid: 10 });
    publisher.publish('/tasks/start', 'containerd.events.TaskStart', { containerId: 'c1', pid: 10 });
    publisher.publish('/tasks/oom', 'containerd.events.TaskOOM', { containerId: 'c1' });
    publisher.publish('/tasks/exit', 'containerd.events.TaskExit', { containerId: 'c1', id: 'c1', pid: 10, exitStatus: 137, exitedAt: new Date(1_700_000_000_000) });
    publisher.publish('/tasks/delete', 'containerd.events.TaskDelete', { containerId: 'c1', pid: 10, exitStatus: 137, exitedAt: new Date(1_700_000_000_000), id: '' });
    await publisher.flush();
    expect(fake.got.map((r) => r.topic)).toEqual(['/tasks/create', '/tasks/start', '/tasks/oom', '/tasks/exit', '/tasks/delete']);
    expect(fake.got.map((r) => r.typeUrl)).toEqual(['containerd.events.TaskCreate', 'containerd.events.TaskStart', 'containerd.events.TaskOOM', 'containerd.events.TaskExit', 'containerd.events.TaskDelete']);
    expect(fake.got.every((r) => r.namespace === 'k8s.io' && r.metadataNamespace === 'k8s.io')).toBe(true);
    expect(fake.got.every((r) => r.timestamp.getTime() >= before - 1000)).toBe(true);
    expect(fake.got[0]!.event).toMatchObject({ containerId: 'c1', bundle: '/b', pid: 10, io: { stdout: '/o', stderr: '/e' }, rootfs: [{ type: 'overlay', options: ['x'] }] });
    expect(fake.got[3]!.event).toEqual({ containerId: 'c1', id: 'c1', pid: 10, exitStatus: 137, exitedAt: new Date(1_700_000_000_000) });
    expect(publisher.pending).toBe(0);
  });

  it('waits for containerd that is not there yet, and for one that restarts, keeping the order', async () => {
    const log = memoryLog();
    const publisher = new EventPublisher({ ttrpcAddress: socket, namespace: 'default', log, retryDelayMs: 5 });
    cleanups.push(() => publisher.close());
    publisher.publish('/tasks/start', 'containerd.events.TaskStart', { containerId: 'a', pid: 1 });
    publisher.publish('/tasks/paused', 'containerd.events.TaskPaused', { containerId: 'a' });
    await new Promise((resolve) => setTimeout(resolve, 60));
    expect(log.lines.some((l) => l.startsWith('warn') && l.includes('not reachable'))).toBe(true);
    let fake = await fakeContainerd(socket);
    await publisher.flush();
    expect(fake.got.map((r) => r.topic)).toEqual(['/tasks/start', '/tasks/paused']);
    // containerd goes away (its connections too) and comes back at the same address
    await fake.server.close();
    fs.rmSync(socket, { force: true });
    publisher.publish('/tasks/resumed', 'containerd.events.TaskResumed', { containerId: 'a' });
    publisher.publish('/tasks/exec-added', 'containerd.events.TaskExecAdded', { containerId: 'a', execId: 'e' });
    publisher.publish('/tasks/exec-started', 'containerd.events.TaskExecStarted', { containerId: 'a', execId: 'e', pid: 3 });
    await new Promise((resolve) => setTimeout(resolve, 40));
    fake = await fakeContainerd(socket);
    cleanups.push(() => fake.server.close());
    await publisher.flush();
    expect(fake.got.map((r) => r.topic)).toEqual(['/tasks/resumed', '/tasks/exec-added', '/tasks/exec-started']);
  });

  it('does not retry an event containerd refuses; the next one still goes', async () => {
    let calls = 0;
    const fake = await fakeContainerd(socket, (r) => {
      calls += 1;
      if (r.topic === '/tasks/oom') throw new TtrpcError(GrpcCode.INVALID_ARGUMENT, 'no thanks');
    });
    cleanups.push(() => fake.server.close());
    const log = memoryLog();
    const publisher = new EventPublisher({ ttrpcAddress: socket, namespace: 'n', log, retryDelayMs: 5 });
    cleanups.push(() => publisher.close());
    publisher.publish('/tasks/oom', 'containerd.events.TaskOOM', { containerId: 'x' });
    publisher.publish('/tasks/exit', 'containerd.events.TaskExit', { containerId: 'x', id: 'x', pid: 1, exitStatus: 1, exitedAt: new Date() });
    await publisher.flush();
    expect(calls).toBe(2);
    expect(fake.got.map((r) => r.topic)).toEqual(['/tasks/exit']);
    expect(log.lines.some((l) => l.startsWith('error') && l.includes('refused') && l.includes('no thanks'))).toBe(true);
  });

  it('gives an event up after maxAttempts when containerd never comes, and flush still resolves', async () => {
    const log = memoryLog();
    const publisher = new EventPublisher({ ttrpcAddress: socket, namespace: 'n', log, retryDelayMs: 1, maxAttempts: 3 });
    publisher.publish('/tasks/start', 'containerd.events.TaskStart', { containerId: 'x', pid: 1 });
    publisher.publish('/tasks/start', 'containerd.events.TaskStart', { containerId: 'y', pid: 2 });
    await publisher.flush();
    expect(publisher.pending).toBe(0);
    expect(log.lines.filter((l) => l.startsWith('error') && l.includes('given up after 3 attempts'))).toHaveLength(2);
    await publisher.close();
    publisher.publish('/tasks/start', 'containerd.events.TaskStart', { containerId: 'z', pid: 3 });
    expect(publisher.pending).toBe(0);
    expect(log.lines.at(-1)).toMatch(/after the publisher closed/);
  });

  it('holds at most maxQueue events, dropping the oldest', async () => {
    const log = memoryLog();
    const publisher = new EventPublisher({ ttrpcAddress: socket, namespace: 'n', log, retryDelayMs: 5, maxQueue: 3 });
    for (let i = 0; i < 6; i++) publisher.publish('/tasks/start', 'containerd.events.TaskStart', { containerId: `c${i}`, pid: i });
    expect(publisher.pending).toBe(3);
    expect(log.lines.filter((l) => l.includes('dropped'))).toHaveLength(3);
    const fake = await fakeContainerd(socket);
    cleanups.push(() => fake.server.close());
    await publisher.flush();
    // c0 may have been in flight before it was dropped from the queue; the last three are there in order
    const ids = fake.got.map((r) => r.event['containerId']);
    expect(ids.slice(-3)).toEqual(['c3', 'c4', 'c5']);
    expect(ids).not.toContain('c1');
    expect(ids).not.toContain('c2');
    await publisher.close();
  });
});
