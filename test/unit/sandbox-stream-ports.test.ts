/**
 * Stream ports without a VM: config checks, the device a sandbox gets, and the record's
 * bookkeeping when containers are deleted.
 */
import { describe, expect, it } from 'vitest';
import { DEFAULT_STREAM_PORTS, resolveSandboxConfig } from '../../src/sandbox/config.js';
import { sandboxResources } from '../../src/sandbox/resources/manager.js';
import { STREAM_PORTS_KIND, StreamPortsResource, parseStreamPorts, releaseClaims, streamSocket } from '../../src/sandbox/resources/stream-ports.js';
import { stdioTransport } from '../../src/sandbox/containers.js';
import { InvalidArgumentError } from '../../src/errors.js';
import { memoryContext } from './resource-context.js';

function context(streamPorts: number, state: unknown) {
  const made = memoryContext(
    new StreamPortsResource(),
    { dir: '/nonexistent/vmpod-test/sb', config: resolveSandboxConfig({ id: 'sb', streamPorts }), boot: { id: '0123456789ab', dir: '/nonexistent/vmpod-test/boots/0123456789ab' } },
    state,
  );
  return Object.assign(made.ctx, { saved: made.record.saves });
}

describe('stream ports', () => {
  it('are on by default, can be turned off, and are bounded', () => {
    expect(resolveSandboxConfig({}).streamPorts).toBe(DEFAULT_STREAM_PORTS);
    expect(resolveSandboxConfig({ streamPorts: 0 }).streamPorts).toBe(0);
    expect(resolveSandboxConfig({ streamPorts: 30 }).streamPorts).toBe(30);
    for (const bad of [-1, 31, 2.5, '4', null]) {
      expect(() => resolveSandboxConfig({ streamPorts: bad as unknown as number })).toThrow(InvalidArgumentError);
    }
  });

  it('are a resource only when there are some', () => {
    expect(sandboxResources(resolveSandboxConfig({ streamPorts: 0 })).some((r) => r.kind === STREAM_PORTS_KIND)).toBe(false);
    expect(sandboxResources(resolveSandboxConfig({})).some((r) => r.kind === STREAM_PORTS_KIND)).toBe(true);
  });

  it('give the VM one virtio-serial device with vmpod.stream.N ports, and start every boot with none in use', async () => {
    const ctx = context(3, { ports: { 1: { container: 'old', fd: 'stdout', marker: 'ab' } } });
    const contribution = await new StreamPortsResource().prepare(ctx);
    expect(contribution.devices).toEqual([
      {
        kind: 'virtio-serial',
        id: 'streams',
        ports: [0, 1, 2].map((i) => ({ name: `vmpod.stream.${i}`, socket: streamSocket(ctx.boot!.dir, i) })),
      },
    ]);
    expect(ctx.saved.at(-1)).toEqual({ ports: {} });
    const release = context(3, { ports: { 0: { container: 'c', fd: 'stderr', marker: 'cd' } } });
    await new StreamPortsResource().release(release);
    expect(release.saved.at(-1)).toEqual({ ports: {} });
  });

  it('are freed in the record when their container is deleted, and only theirs', () => {
    const state = parseStreamPorts({
      ports: {
        0: { container: 'a', fd: 'stdout', marker: '00' },
        1: { container: 'a', fd: 'stderr', marker: '11' },
        2: { container: 'b', fd: 'stdout', marker: '22' },
        3: { container: 7, fd: 'stdout' }, // garbage is dropped
      },
    });
    releaseClaims(state, 'a');
    expect(state).toEqual({ ports: { 2: { container: 'b', fd: 'stdout', marker: '22' } } });
    expect(parseStreamPorts(undefined)).toEqual({ ports: {} });
  });

  it('are used or not as stdio.transport says', () => {
    expect(stdioTransport(undefined)).toBe('auto');
    expect(stdioTransport({ stdout: true })).toBe('auto');
    expect(stdioTransport({ transport: 'agent' })).toBe('agent');
    expect(() => stdioTransport({ transport: 'direct' as 'auto' })).toThrow(InvalidArgumentError);
  });
});
