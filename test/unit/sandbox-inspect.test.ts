/**
 * The record part of sandbox.inspect() and the shape of container inspections, without a VM:
 * a record written by hand (as state.json holds it) becomes plain data that shares nothing with
 * the record, processes are reported alive only when pid and start time match, pending volumes
 * are left out, the hugepage reservation shows only with a boot, and the agent's container
 * list becomes ISO dates and the container states users see.
 */
import { describe, expect, it } from 'vitest';
import type { ContainerInfo } from '../../src/agent/messages.js';
import { readProcStat } from '../../src/host/process.js';
import { resolveSandboxConfig } from '../../src/sandbox/config.js';
import { inspectContainerInfo, inspectRecord } from '../../src/sandbox/inspect.js';
import { RECORD_FORMAT, type SandboxRecord } from '../../src/sandbox/record.js';
import { HUGEPAGES_KIND } from '../../src/sandbox/resources/hugepages.js';
import { SHARED_FS_KIND } from '../../src/sandbox/resources/share.js';
import { VOLUMES_KIND } from '../../src/sandbox/resources/volumes/index.js';

const self = { pid: process.pid, startTime: readProcStat(process.pid)!.startTime };

function record(changes: Partial<SandboxRecord> = {}): SandboxRecord {
  return {
    format: RECORD_FORMAT,
    id: 'box',
    state: 'running',
    createdAt: '2026-12-07T20:00:00.000Z',
    updatedAt: '2026-12-07T20:00:05.000Z',
    config: resolveSandboxConfig({ id: 'box', stateDir: '/run/vmpod-test', memoryMiB: 512, cpus: 2 }),
    op: undefined as never,
    boot: {
      id: '0123456789ab',
      dir: '/run/vmpod-test/boots/0123456789ab',
      startedAt: '2026-12-07T20:00:01.000Z',
      guest: { kernel: '/k', initramfs: '/i', kernelRelease: '6.1.0' },
      vm: { hypervisor: 'qemu', id: 'box', pid: self.pid, startTime: self.startTime, machine: 'q35', controlSockets: [] } as never,
      logger: { pid: self.pid, startTime: self.startTime + 1 }, // another process that had this pid
    },
    resources: {
      [SHARED_FS_KIND]: { binds: {}, virtiofsd: { ...self, socket: '/s', sharedDir: '/d', logFile: '/l' } },
      [HUGEPAGES_KIND]: { claim: { claimId: 'c1', sizeBytes: 268435456 } },
      [VOLUMES_KIND]: {
        volumes: [
          { spec: { kind: 'tmpfs', name: 'scratch' }, guestPath: '/run/vmpod/volumes/scratch', hotplugged: false },
          { spec: { kind: 'tmpfs', name: 'half-made' }, hotplugged: true, pending: 'add' },
        ],
      },
    },
    containers: {},
    ...changes,
  };
}

describe('inspectRecord', () => {
  it('reports state, config, boot, resources with live processes, volumes, devices and addresses as plain data', () => {
    const r = record();
    delete r.op;
    const info = inspectRecord(r, '/run/vmpod-test/sandboxes/box', '/run/vmpod-test/sandboxes/box/console.log');
    expect(info).toEqual({
      id: 'box',
      state: 'running',
      createdAt: '2026-12-07T20:00:00.000Z',
      updatedAt: '2026-12-07T20:00:05.000Z',
      dir: '/run/vmpod-test/sandboxes/box',
      consoleLog: '/run/vmpod-test/sandboxes/box/console.log',
      config: JSON.parse(JSON.stringify(r.config)),
      boot: { id: '0123456789ab', startedAt: '2026-12-07T20:00:01.000Z', kernel: '/k', initramfs: '/i', kernelRelease: '6.1.0' },
      resources: {
        cpus: 2,
        memoryMiB: 512,
        machine: 'q35',
        hugepageBytes: 268435456,
        processes: { hypervisor: { pid: self.pid, alive: true }, logger: { pid: self.pid, alive: false }, virtiofsd: { pid: self.pid, alive: true } },
      },
      volumes: [{ spec: { kind: 'tmpfs', name: 'scratch' }, guestPath: '/run/vmpod/volumes/scratch', hotplugged: false }],
      devices: { vhostUser: [], pci: [] },
      networks: [],
      addresses: [],
    });
    // Plain: it survives JSON, and changing it changes nothing of the record.
    expect(JSON.parse(JSON.stringify(info))).toEqual(info);
    info.config.cpus = 64;
    info.volumes[0]!.spec.name = 'changed';
    expect(r.config.cpus).toBe(2);
    expect((r.resources[VOLUMES_KIND] as { volumes: { spec: { name: string } }[] }).volumes[0]!.spec.name).toBe('scratch');
  });

  it('names the operation under way and why it last stopped; no boot, no processes, no reservation once stopped', () => {
    const stopping = inspectRecord(record({ state: 'stopping', op: { kind: 'stop', owner: { ...self, token: 't' }, since: '2026-12-07T20:01:00.000Z' } }), '/d', '/d/console.log');
    expect(stopping.operation).toEqual({ kind: 'stop', pid: self.pid, since: '2026-12-07T20:01:00.000Z' });
    const r = record({ state: 'stopped', stopReason: { reason: 'guest', detail: 'guest-shutdown' }, resources: {} });
    delete r.boot;
    delete r.op;
    const stopped = inspectRecord(r, '/d', '/d/console.log');
    expect(stopped).toMatchObject({ state: 'stopped', stopReason: { reason: 'guest', detail: 'guest-shutdown' }, resources: { processes: {} }, volumes: [] });
    expect(stopped.boot).toBeUndefined();
    expect(stopped.operation).toBeUndefined();
    expect(stopped.resources.hugepageBytes).toBeUndefined();
  });
});

describe('inspectContainerInfo', () => {
  const info: ContainerInfo = {
    id: 'c1',
    status: 'creating',
    pid: 42,
    bundle: '/run/vmpod/shared/rootfs/x',
    rootfs: 'builtin',
    createdAt: Date.parse('2026-12-07T20:02:03.004Z'),
    terminal: false,
    exit: null,
    execs: [{ execId: 'e1', pid: 43, status: 'stopped', terminal: true, exit: { exitCode: 1, signal: 0, oomKilled: false } }],
  };

  it('gives ISO dates, the sandbox, and created/running/stopped states', () => {
    expect(inspectContainerInfo('box', info)).toEqual({
      id: 'c1',
      sandbox: 'box',
      state: 'created',
      pid: 42,
      bundle: '/run/vmpod/shared/rootfs/x',
      rootfs: 'builtin',
      createdAt: '2026-12-07T20:02:03.004Z',
      terminal: false,
      exit: null,
      execs: [{ execId: 'e1', pid: 43, status: 'stopped', terminal: true, exit: { exitCode: 1, signal: 0, oomKilled: false } }],
    });
    expect(inspectContainerInfo('box', { ...info, status: 'created' }).state).toBe('created');
    expect(inspectContainerInfo('box', { ...info, status: 'running' }).state).toBe('running');
    const stopped = inspectContainerInfo('box', { ...info, status: 'stopped', exit: { exitCode: 137, signal: 9, oomKilled: true } });
    expect(stopped).toMatchObject({ state: 'stopped', exit: { exitCode: 137, signal: 9, oomKilled: true } });
    // A copy: the agent's answer is not shared.
    stopped.execs[0]!.exit!.exitCode = 5;
    expect(info.execs[0]!.exit!.exitCode).toBe(1);
  });
});
