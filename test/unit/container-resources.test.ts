// Container.pause / resume / update on the host side: the checks made before any agent call,
// the states they move through, and checkResources field by field.
import { describe, expect, it } from 'vitest';
import type { AgentClient } from '../../src/agent/client.js';
import { checkResources, MAX_CPU_QUOTA_US, resourcesFromOci } from '../../src/agent/resources.js';
import { Container, type ContainerHost } from '../../src/container/container.js';
import { InvalidArgumentError, InvalidStateError } from '../../src/errors.js';
import type { ContainerState } from '../../src/sandbox/state-machine.js';

/** A host whose agent records the calls made to it (and never answers a wait). */
function fakeHost() {
  const calls: [string, ...unknown[]][] = [];
  const agent = {
    pauseContainer: async (...args: unknown[]) => void calls.push(['pause', ...args]),
    resumeContainer: async (...args: unknown[]) => void calls.push(['resume', ...args]),
    updateContainer: async (...args: unknown[]) => void calls.push(['update', ...args]),
    wait: () => new Promise(() => undefined),
  } as unknown as AgentClient;
  const host: ContainerHost = {
    agent: async () => {
      calls.push(['agent']);
      return agent;
    },
    currentAgent: () => undefined,
    label: 'sandbox "s"',
    releaseContainer: async () => undefined,
    containerExited: () => undefined,
    containerLogs: () => {
      throw new Error('not used');
    },
    inspectContainer: () => {
      throw new Error('not used');
    },
  };
  return { host, calls };
}

const container = (state: ContainerState) => {
  const { host, calls } = fakeHost();
  return { c: new Container(host, 'c', state, undefined), calls };
};

describe('checkResources', () => {
  it('keeps the fields given, and only those', () => {
    expect(checkResources({ memory: { limit: 256 << 20, swap: 512 << 20 }, pids: { limit: 64 } })).toEqual({ memory: { limit: 256 << 20, swap: 512 << 20 }, pids: { limit: 64 } });
    expect(checkResources({ cpu: { shares: 2, quota: -1, period: 1000, cpus: '0-1,3', mems: '0' }, blockIO: { weight: 1000 } })).toEqual({
      cpu: { shares: 2, quota: -1, period: 1000, cpus: '0-1,3', mems: '0' },
      blockIO: { weight: 1000 },
    });
    expect(checkResources({ memory: { limit: -1, swap: 0, reservation: -1 }, pids: { limit: -1 } })).toEqual({ memory: { limit: -1, swap: 0, reservation: -1 }, pids: { limit: -1 } });
    expect(checkResources({ cpu: { quota: MAX_CPU_QUOTA_US } })).toEqual({ cpu: { quota: MAX_CPU_QUOTA_US } });
  });

  it.each([
    [{}, 'resources: holds nothing to update'],
    [{ blockIO: {} }, 'resources: holds nothing to update'],
    [null, 'resources: must be an object'],
    [[], 'resources: must be an object'],
    [{ hugepageLimits: [] }, 'resources.hugepageLimits: cannot be updated'],
    [{ memory: { kernel: 1 } }, 'resources.memory.kernel: cannot be updated'],
    [{ memory: { limit: (1 << 20) - 1 } }, 'resources.memory.limit: 1048575 is neither -1'],
    [{ memory: { limit: 0 } }, 'resources.memory.limit'],
    [{ memory: { limit: 2 ** 60 } }, 'resources.memory.limit'],
    [{ memory: { limit: 1.5 * (1 << 20) + 0.5 } }, 'resources.memory.limit'],
    [{ memory: { limit: '1G' } }, 'resources.memory.limit: "1G" is neither'],
    [{ memory: { reservation: -2 } }, 'resources.memory.reservation'],
    [{ memory: { swap: 1 << 30 } }, 'resources.memory.swap: is memory + swap: it needs a memory.limit'],
    [{ memory: { limit: -1, swap: 1 << 30 } }, 'resources.memory.swap: is memory + swap: it needs a memory.limit'],
    [{ memory: { limit: 1 << 30, swap: 1 << 20 } }, 'resources.memory.swap: is memory + swap: it must not be below'],
    [{ cpu: { shares: 1 } }, 'resources.cpu.shares'],
    [{ cpu: { shares: 262_145 } }, 'resources.cpu.shares'],
    [{ cpu: { quota: 0 } }, 'resources.cpu.quota'],
    [{ cpu: { quota: MAX_CPU_QUOTA_US + 1 } }, 'resources.cpu.quota'],
    [{ cpu: { period: 999 } }, 'resources.cpu.period'],
    [{ cpu: { period: NaN } }, 'resources.cpu.period: NaN'],
    [{ cpu: { cpus: '' } }, 'resources.cpu.cpus'],
    [{ cpu: { cpus: '3-1' } }, 'resources.cpu.cpus'],
    [{ cpu: { cpus: '0,,1' } }, 'resources.cpu.cpus'],
    [{ cpu: { cpus: '0-4096' } }, 'resources.cpu.cpus'],
    [{ cpu: { mems: ' 0' } }, 'resources.cpu.mems'],
    [{ cpu: { realtimePeriod: 1 } }, 'resources.cpu.realtimePeriod: cannot be updated'],
    [{ pids: {} }, 'resources.pids.limit'],
    [{ pids: { limit: 4_194_305 } }, 'resources.pids.limit'],
    [{ pids: { limit: -2 } }, 'resources.pids.limit'],
    [{ blockIO: { weight: 9 } }, 'resources.blockIO.weight'],
    [{ blockIO: { weight: 1001 } }, 'resources.blockIO.weight'],
    [{ blockIO: { leafWeight: 100 } }, 'resources.blockIO.leafWeight: cannot be updated'],
  ])('refuses %j', (resources, message) => {
    expect(() => checkResources(resources)).toThrow(InvalidArgumentError);
    expect(() => checkResources(resources)).toThrow(message);
  });
});

describe('Container.pause, resume and update', () => {
  it('refuses a bad update with a typed error before any agent call', async () => {
    const { c, calls } = container('running');
    await expect(c.update({ memory: { limit: 5 } })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(c.update({ cpu: { shares: 1 } })).rejects.toThrow('resources.cpu.shares');
    await expect(c.update({ nope: 1 } as never)).rejects.toThrow('resources.nope: cannot be updated');
    expect(calls).toEqual([]);
  });

  it('sends the checked update in created, running and paused; refuses it once stopped', async () => {
    for (const state of ['created', 'running', 'paused'] as const) {
      const { c, calls } = container(state);
      await c.update({ pids: { limit: 10 }, memory: { limit: 64 << 20 } });
      expect(calls).toEqual([['agent'], ['update', 'c', { pids: { limit: 10 }, memory: { limit: 64 << 20 } }, {}]]);
    }
    for (const state of ['stopped', 'deleted'] as const) {
      const { c, calls } = container(state);
      await expect(c.update({ pids: { limit: 10 } })).rejects.toBeInstanceOf(InvalidStateError);
      expect(calls).toEqual([]);
    }
  });

  it('pauses a running container and resumes it; each call in the wrong state is an InvalidStateError before any agent call', async () => {
    const { c, calls } = container('running');
    await expect(c.resume()).rejects.toThrow('container "c" in sandbox "s" is running: resume needs it paused');
    await c.pause();
    expect(c.state).toBe('paused');
    await expect(c.pause()).rejects.toThrow('container "c" in sandbox "s" is paused: pause needs it running');
    await expect(c.exec({ args: ['true'] })).rejects.toThrow('is paused: exec needs it running');
    await expect(c.start()).rejects.toBeInstanceOf(InvalidStateError);
    await expect(c.delete()).rejects.toThrow('cannot delete container "c" in sandbox "s": it is paused; kill it first, or delete with force');
    expect(calls.filter(([name]) => name !== 'agent')).toEqual([['pause', 'c', {}]]);
    await c.resume({ freezeTimeoutMs: 500 });
    expect(c.state).toBe('running');
    expect(calls.at(-1)).toEqual(['resume', 'c', { freezeTimeoutMs: 500 }]);

    for (const state of ['created', 'stopped', 'deleted'] as const) {
      const other = container(state);
      await expect(other.c.pause()).rejects.toBeInstanceOf(InvalidStateError);
      await expect(other.c.resume()).rejects.toBeInstanceOf(InvalidStateError);
      expect(other.calls).toEqual([]);
    }
  });
});

describe('resourcesFromOci', () => {
  it("keeps what an update can change of what containerd's shim sends, leaving runc's unset zeros out and naming the rest", () => {
    // The shape of a full LinuxResources as containerd marshals it for `runc update --resources -`.
    const oci = {
      devices: [{ allow: false, access: 'rwm' }],
      memory: { limit: 268435456, reservation: 0, swap: 536870912, kernel: 0, swappiness: null, disableOOMKiller: false },
      cpu: { shares: 1024, quota: 50000, period: 100000, realtimeRuntime: 0, realtimePeriod: 0, cpus: '', mems: '' },
      pids: { limit: 0 },
      blockIO: { weight: 0, weightDevice: [] },
      hugepageLimits: [],
      unified: { 'memory.high': '1000000' },
    };
    const { resources, ignored } = resourcesFromOci(oci);
    expect(resources).toEqual({ memory: { limit: 268435456, swap: 536870912 }, cpu: { shares: 1024, quota: 50000, period: 100000 } });
    expect(ignored.sort()).toEqual(
      ['blockIO.weightDevice', 'cpu.realtimePeriod', 'cpu.realtimeRuntime', 'devices', 'hugepageLimits', 'memory.disableOOMKiller', 'memory.kernel', 'unified'].sort(),
    );
    // What it keeps passes the check unchanged.
    expect(checkResources(resources)).toEqual(resources);
    expect(resourcesFromOci({ pids: { limit: 32 }, cpu: { cpus: '0-1' } }).resources).toEqual({ pids: { limit: 32 }, cpu: { cpus: '0-1' } });
    expect(resourcesFromOci({ devices: [] })).toEqual({ resources: null, ignored: ['devices'] });
  });

  it('refuses what is not an OCI resources object; values are left to checkResources', () => {
    expect(() => resourcesFromOci(null)).toThrow(InvalidArgumentError);
    expect(() => resourcesFromOci({ memory: 5 })).toThrow('resources.memory: must be an object');
    const odd = resourcesFromOci({ memory: { limit: 12 } }).resources;
    expect(() => checkResources(odd)).toThrow('resources.memory.limit');
  });
});
