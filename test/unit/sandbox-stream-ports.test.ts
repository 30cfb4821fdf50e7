/**
 * Stream ports without a VM: config checks, the device a sandbox gets, and the record's
 * bookkeeping when containers are deleted.
 */
import { describe, expect, it } from 'vitest';
import { resolveSandboxConfig } from '../../src/sandbox/config.js';
import type { ResourceContext } from '../../src/sandbox/resource.js';
import { sandboxResources } from '../../src/sandbox/resources.js';
import {
  DEFAULT_STREAM_PORTS,
  STREAM_PORTS_KIND,
  StreamPortsResource,
  releaseStreamPorts,
  stdioTransport,
  streamSocket,
} from '../../src/sandbox/stream-ports.js';
import { InvalidArgumentError } from '../../src/errors.js';

function context(streamPorts: number, state: unknown): ResourceContext & { saved: unknown[] } {
  const saved: unknown[] = [];
  return {
    sandboxId: 'sb',
    dir: '/nonexistent/vmpod-test/sb',
    config: resolveSandboxConfig({ id: 'sb', streamPorts }),
    state,
    async save(value: unknown) {
      saved.push(structuredClone(value));
    },
    saved,
  };
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
        ports: [0, 1, 2].map((i) => ({ name: `vmpod.stream.${i}`, socket: streamSocket(ctx.dir, i) })),
      },
    ]);
    expect(ctx.saved).toEqual([{ ports: {} }]);
    const release = context(3, { ports: { 0: { container: 'c', fd: 'stderr', marker: 'cd' } } });
    await new StreamPortsResource().release(release);
    expect(release.saved).toEqual([{ ports: {} }]);
  });

  it('are freed in the record when their container is deleted, and only theirs', () => {
    const record = {
      resources: {
        [STREAM_PORTS_KIND]: {
          ports: {
            0: { container: 'a', fd: 'stdout', marker: '00' },
            1: { container: 'a', fd: 'stderr', marker: '11' },
            2: { container: 'b', fd: 'stdout', marker: '22' },
            3: { container: 7, fd: 'stdout' }, // garbage is dropped
          },
        },
      } as Record<string, unknown>,
    };
    releaseStreamPorts(record, 'a');
    expect(record.resources[STREAM_PORTS_KIND]).toEqual({ ports: { 2: { container: 'b', fd: 'stdout', marker: '22' } } });
    const none = { resources: {} as Record<string, unknown> };
    releaseStreamPorts(none, 'a');
    expect(none.resources).toEqual({});
  });

  it('are used or not as stdio.transport says', () => {
    expect(stdioTransport(undefined)).toBe('auto');
    expect(stdioTransport({ stdout: true })).toBe('auto');
    expect(stdioTransport({ transport: 'agent' })).toBe('agent');
    expect(() => stdioTransport({ transport: 'direct' as 'auto' })).toThrow(InvalidArgumentError);
  });
});
