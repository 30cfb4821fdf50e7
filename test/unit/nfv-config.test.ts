/**
 * Checks of the NFV and volume fields of a sandbox config (before any side effect), the KSM
 * memory flag on the QEMU command line, and the hugepages resource against a generated sysfs:
 * a request larger than the host refused with nothing changed, a crash between the write and
 * its record released from the pending note.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { InsufficientHugepagesError } from '../../src/devices/errors.js';
import { reserveHugepages } from '../../src/devices/hugepages.js';
import { buildQemuCommandLine } from '../../src/hypervisor/qemu/cmdline.js';
import { HugepagesResource } from '../../src/sandbox/resources/hugepages.js';
import { resolveSandboxConfig, type SandboxConfig } from '../../src/sandbox/config.js';
import { memoryContext, type MemoryRecord } from './resource-context.js';
import { Volume } from '../../src/volume/volume.js';
import { containerMounts } from '../../src/sandbox/resources/volumes/container.js';
import { VolumeReadOnlyError } from '../../src/volume/errors.js';
import { FakeSysfs } from './devices-fake-sysfs.js';

const fake = vi.hoisted(() => ({ current: undefined as { root: string } | undefined }));
vi.mock('../../src/devices/sysfs.js', async (importOriginal) => {
  const actual = await importOriginal<typeof import('../../src/devices/sysfs.js')>();
  return {
    ...actual,
    sysfsOf: (options: { sysfs?: unknown } = {}) =>
      fake.current !== undefined && options.sysfs === fake.current.root ? fake.current : actual.sysfsOf(options as never),
  };
});

describe('NFV config', () => {
  it('fills in defaults for hugepages, vhost-user NICs, devices and KSM', () => {
    const c = resolveSandboxConfig({
      memoryMiB: 512,
      hugepages: true,
      vhostUser: [{ socket: '/run/dpdk/vhost0.sock' }, { socket: '/run/dpdk/vhost1.sock', mode: 'server', mac: '52:54:00:00:00:AA', queues: 2 }],
      devices: [{ address: '0000:3B:02.1' }],
    });
    expect(c.hugepages).toEqual({ backRam: true, pageSizeBytes: 2097152, prealloc: true, guestPages: 0 });
    expect(c.vhostUser).toEqual([
      { id: 'vhu0', socket: '/run/dpdk/vhost0.sock', mode: 'client', rootPort: true },
      { id: 'vhu1', socket: '/run/dpdk/vhost1.sock', mode: 'server', rootPort: true, mac: '52:54:00:00:00:aa', queues: 2 },
    ]);
    expect(c.devices).toEqual([{ address: '0000:3b:02.1', id: 'hostdev0', force: false }]);
    expect(c.ksm).toBe(false);
    expect(c.sysfs).toBe('/sys');
  });

  it('reserves guest hugepages for hugepages volumes, and checks they fit in guest RAM', () => {
    const c = resolveSandboxConfig({ memoryMiB: 256, volumes: [Volume.hugepages('hp', 16)] });
    expect(c.hugepages).toEqual({ backRam: false, pageSizeBytes: 2097152, prealloc: false, guestPages: 8 });
    expect(() => resolveSandboxConfig({ memoryMiB: 256, hugepages: { guestPages: 4 }, volumes: [Volume.hugepages('hp', 16)] })).toThrow(/fewer than/u);
    expect(() => resolveSandboxConfig({ memoryMiB: 256, hugepages: { guestPages: 100 } })).toThrow(/less than 128 MiB/u);
    expect(() => resolveSandboxConfig({ memoryMiB: 1000, hugepages: { pageSize: '1G' } })).toThrow(/not a multiple of the hugepage size/u);
    expect(() => resolveSandboxConfig({ hugepages: { pageSize: '3M' } })).toThrow(InvalidArgumentError);
  });

  const bad: [string, SandboxConfig, RegExp][] = [
    ['a relative socket', { vhostUser: [{ socket: 'vhost.sock' }] }, /vhostUser\[0\]\.socket/u],
    ['a socket path too long for sun_path', { vhostUser: [{ socket: `/${'x'.repeat(120)}` }] }, /sun_path/u],
    ['a bad mode', { vhostUser: [{ socket: '/a.sock', mode: 'both' as never }] }, /mode/u],
    ['two NICs on one socket', { vhostUser: [{ socket: '/a.sock' }, { socket: '/a.sock' }] }, /same socket/u],
    ['a duplicate device id', { vhostUser: [{ socket: '/a.sock', id: 'x' }], devices: [{ address: '0000:3b:00.0', id: 'x' }] }, /duplicate device id/u],
    ['KSM with the shared filesystem', { ksm: true }, /shared filesystem/u],
    ['KSM with vhost-user', { ksm: true, sharedFs: false, vhostUser: [{ socket: '/a.sock' }] }, /vhost-user NICs/u],
    ['KSM with hugepage RAM', { ksm: true, sharedFs: false, hugepages: true }, /hugepage-backed RAM/u],
    ['a relative sysfs', { sysfs: 'sys' }, /sysfs/u],
    ['a volume without a name', { volumes: [{ kind: 'tmpfs' } as never] }, /volumes\[0\]\.name/u],
    ['two volumes of one name', { volumes: [Volume.tmpfs('a'), Volume.tmpfs('a')] }, /duplicate volume name/u],
    ['an odd hugepages volume', { volumes: [{ kind: 'hugepages', name: 'h', sizeMiB: 3 }] }, /multiple of 2/u],
    ['an unknown volume kind', { volumes: [{ kind: 'nfs', name: 'n' } as never] }, /kind/u],
    ['a bad block format', { volumes: [{ kind: 'block', name: 'b', source: '/d.img', format: 'vmdk' as never }] }, /format/u],
  ];
  it.each(bad)('rejects %s', (_, config, field) => {
    expect(() => resolveSandboxConfig(config)).toThrow(InvalidArgumentError);
    expect(() => resolveSandboxConfig(config)).toThrow(field);
  });

  it('marks guest RAM mergeable (mem-merge=on) only for KSM sandboxes', () => {
    const line = (merge: boolean) =>
      buildQemuCommandLine(
        { id: 'k', cpus: 1, memory: { sizeMiB: 256, merge }, kernel: '/k', consoleLog: '/c', runDir: '/r' },
        { host: { kvm: false, vhostNet: false, tscKhz: 2596145 } },
      ).args;
    expect(line(true)).toContain('q35,mem-merge=on');
    expect(line(false)).toContain('q35,mem-merge=off');
  });
});

describe('container volume mounts', () => {
  const state = {
    volumes: [
      { spec: { kind: 'directory', name: 'ro', source: '/srv', readOnly: true }, hostMounts: [], hotplugged: false, guestPath: '/run/vmpod/shared/volumes/ro' },
      { spec: { kind: 'tmpfs', name: 'scratch' }, hostMounts: [], hotplugged: false, guestPath: '/run/vmpod/volumes/scratch' },
    ],
  };
  const spec = { ociVersion: '1.0.2', process: { args: ['sh'] } };

  it('binds volumes by their guest path, read-only where asked', () => {
    expect(containerMounts(state, [{ volume: 'ro', destination: '/data', readOnly: true }, { volume: 'scratch', destination: '/tmp/s' }], spec, 0)).toEqual([
      { destination: '/data', type: 'bind', source: '/run/vmpod/shared/volumes/ro', options: ['rbind', 'ro'] },
      { destination: '/tmp/s', type: 'bind', source: '/run/vmpod/volumes/scratch', options: ['rbind', 'rw'] },
    ]);
  });

  it('refuses a read-only volume mounted read-write, and an unknown volume', () => {
    expect(() => containerMounts(state, [{ volume: 'ro', destination: '/data' }], spec, 0)).toThrow(VolumeReadOnlyError);
    expect(() => containerMounts(state, [{ volume: 'nope', destination: '/x' }], spec, 0)).toThrow(/volume "nope" does not exist/u);
  });

  it('mounts a hugetlbfs at /dev/hugepages for OCI hugepage limits, when the guest has pages', () => {
    const limited = { ...spec, linux: { resources: { hugepageLimits: [{ pageSize: '2MB', limit: 5 * 1024 * 1024 }] } } };
    expect(containerMounts(state, [], limited, 4)).toEqual([
      { destination: '/dev/hugepages', type: 'hugetlbfs', source: 'nodev', options: ['nosuid', 'nodev', 'pagesize=2M', `size=${4 * 1024 * 1024}`] },
    ]);
    expect(() => containerMounts(state, [], limited, 0)).toThrow(/reserves no guest hugepages/u);
    const oneGig = { ...spec, linux: { resources: { hugepageLimits: [{ pageSize: '1GB', limit: 1 << 30 }] } } };
    expect(() => containerMounts(state, [], oneGig, 4)).toThrow(/only 2 MiB hugepages/u);
  });
});

describe('the hugepages resource on a generated sysfs', () => {
  let sysfs: FakeSysfs;
  let dir: string;
  beforeEach(async () => {
    sysfs = await FakeSysfs.create();
    fake.current = sysfs;
    await sysfs.addHugepages(2048, [0], 1024 * 1024); // one node of 1 GiB
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-hp-'));
  });
  afterEach(async () => {
    await sysfs.cleanup();
    await fs.rm(dir, { recursive: true, force: true });
  });

  let record: MemoryRecord;
  function context(config: SandboxConfig) {
    const made = memoryContext(new HugepagesResource(), { dir, config: resolveSandboxConfig({ ...config, sysfs: sysfs.root, stateDir: dir }) });
    record = made.record;
    return made.ctx;
  }

  it('refuses more pages than the host has before writing anything, and leaves no mount', async () => {
    const ctx = context({ memoryMiB: 2048, hugepages: true });
    const error = await new HugepagesResource().prepare(ctx).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InsufficientHugepagesError);
    expect((error as InsufficientHugepagesError).attempted).toBe(false);
    expect(sysfs.writes).toEqual([]);
    await new HugepagesResource().release(ctx);
    expect(sysfs.writes).toEqual([]);
    expect(await fs.readdir(dir)).toEqual([]);
  });

  it('rolls a partial allocation back and reports it (the kernel found only some pages)', async () => {
    sysfs.hugepageCapacity.set('2048 0', 50);
    const ctx = context({ memoryMiB: 256, hugepages: true });
    const error = await new HugepagesResource().prepare(ctx).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InsufficientHugepagesError);
    expect(error).toMatchObject({ attempted: true, obtained: 50, requested: 128, rolledBack: true });
    expect(await sysfs.readInt('kernel/mm/hugepages/hugepages-2048kB/nr_hugepages')).toBe(0);
    expect(ctx.state).toEqual({ claim: { claimId: expect.stringMatching(/^sb:hugepages:/u), sizeBytes: 2097152 } });
    await new HugepagesResource().release(ctx);
    expect(await sysfs.readInt('kernel/mm/hugepages/hugepages-2048kB/nr_hugepages')).toBe(0);
    expect(ctx.state).toEqual({});
  });

  it('after a crash between the reservation and its record, gives back exactly the pages it added, once', async () => {
    const ctx = context({ memoryMiB: 256, hugepages: true });
    await sysfs.write('kernel/mm/hugepages/hugepages-2048kB/nr_hugepages', '10'); // someone else's
    const claimId = 'sb:hugepages:crashed';
    record.state = { claim: { claimId, sizeBytes: 2097152 } }; // recorded before the reservation
    await reserveHugepages({ size: 2097152, count: 128 }, { sysfs: sysfs.root, claimId, owner: 'sandbox sb' }); // whose record was lost
    expect(await sysfs.readInt('kernel/mm/hugepages/hugepages-2048kB/nr_hugepages')).toBe(138);
    await new HugepagesResource().release(ctx);
    expect(await sysfs.readInt('kernel/mm/hugepages/hugepages-2048kB/nr_hugepages')).toBe(10);
    expect(ctx.state).toEqual({});
    // Released again (a crash before the record said so): nothing more is taken.
    record.state = { claim: { claimId, sizeBytes: 2097152 } };
    await new HugepagesResource().release(ctx);
    expect(await sysfs.readInt('kernel/mm/hugepages/hugepages-2048kB/nr_hugepages')).toBe(10);
  });

  it('adds only kernel arguments when guest RAM stays ordinary', async () => {
    const ctx = context({ memoryMiB: 256, hugepages: { backRam: false, guestPages: 16 } });
    expect(await new HugepagesResource().prepare(ctx)).toEqual({ kernelArgs: ['hugepagesz=2M', 'hugepages=16'] });
    expect(sysfs.writes).toEqual([]);
  });
});
