import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError, NotFoundError } from '../../src/errors.js';
import { InsufficientHugepagesError, UnsupportedHugepageSizeError } from '../../src/devices/errors.js';
import {
  hugepagePool,
  hugepageSize,
  listHugepages,
  mountHugetlbfs,
  releaseHugepages,
  reserveHugepages,
  type HugepageReservationRecord,
} from '../../src/devices/hugepages.js';
import { FakeSysfs } from './devices-fake-sysfs.js';
import type { HugepageWorkerOptions, HugepageWorkerReport } from './devices-hugepages-worker.js';
import { runWorkers } from './devices-workers.js';

const MiB = 1024 * 1024;
const GLOBAL_2M = 'kernel/mm/hugepages/hugepages-2048kB/nr_hugepages';
const node2M = (n: number): string => `devices/system/node/node${n}/hugepages/hugepages-2048kB/nr_hugepages`;

let sysfs: FakeSysfs;
beforeEach(async () => {
  sysfs = await FakeSysfs.create();
  await sysfs.addHugepages(2048, [0, 1], 1024 * 1024); // two nodes of 1 GiB each
});
afterEach(async () => {
  await sysfs.cleanup();
});

describe('hugepageSize', () => {
  it('parses bytes and binary-unit strings', () => {
    expect(hugepageSize(2 * MiB)).toBe(2 * MiB);
    expect(hugepageSize('2M')).toBe(2 * MiB);
    expect(hugepageSize('2MB')).toBe(2 * MiB);
    expect(hugepageSize('2MiB')).toBe(2 * MiB);
    expect(hugepageSize('2048kB')).toBe(2 * MiB);
    expect(hugepageSize('1G')).toBe(1024 * MiB);
  });
  it('rejects what is not a power-of-two size', () => {
    for (const bad of ['3M', '2X', '', '-2M', 0, 1000, 2 * MiB + 1, '2M; rm', null]) {
      expect(() => hugepageSize(bad)).toThrow(InvalidArgumentError);
    }
  });
});

describe('hugepage pools (fake sysfs)', () => {
  it('lists sizes with per-node counts', async () => {
    await sysfs.addHugepages(1048576, [0, 1], 1024 * 1024);
    await sysfs.file('devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages', '3');
    await sysfs.file('devices/system/node/node1/hugepages/hugepages-2048kB/free_hugepages', '2');
    await sysfs.file(GLOBAL_2M, '3');
    await sysfs.file('kernel/mm/hugepages/hugepages-2048kB/free_hugepages', '2');
    await sysfs.file('kernel/mm/hugepages/hugepages-2048kB/resv_hugepages', '1');
    const pools = await listHugepages({ sysfs });
    expect(pools.map((p) => p.sizeBytes)).toEqual([2 * MiB, 1024 * MiB]);
    expect(pools[0]).toEqual({
      sizeBytes: 2 * MiB,
      total: 3,
      free: 2,
      surplus: 0,
      reserved: 1,
      overcommit: 0,
      nodes: [
        { node: 0, total: 0, free: 0, surplus: 0 },
        { node: 1, total: 3, free: 2, surplus: 0 },
      ],
    });
    expect((await hugepagePool('1G', { sysfs })).sizeBytes).toBe(1024 * MiB);
  });

  it('reserves globally, reads back and releases to the previous count, with the exact writes', async () => {
    await sysfs.file(GLOBAL_2M, '0');
    const r = await reserveHugepages({ size: '2M', count: 6 }, { sysfs });
    expect(sysfs.writes).toEqual([[GLOBAL_2M, '6']]);
    expect(r.toJSON()).toEqual({ sizeBytes: 2 * MiB, node: null, previous: 0, obtained: 6 });
    expect([r.requested, r.added, r.partial]).toEqual([6, 6, false]);
    expect((await hugepagePool('2M', { sysfs })).nodes.map((n) => n.total)).toEqual([6, 0]);
    await r.release();
    await r.release(); // idempotent
    expect(sysfs.writes).toEqual([
      [GLOBAL_2M, '6'],
      [GLOBAL_2M, '0'],
    ]);
    expect((await hugepagePool('2M', { sysfs })).total).toBe(0);
  });

  it('reserves on one NUMA node', async () => {
    const r = await reserveHugepages({ size: 2 * MiB, count: 3, node: 1 }, { sysfs });
    expect(sysfs.writes).toEqual([[node2M(1), '3']]);
    const pool = await hugepagePool('2M', { sysfs });
    expect([pool.total, pool.nodes[0]!.total, pool.nodes[1]!.total]).toEqual([3, 0, 3]);
    await r.release();
    expect(sysfs.writes.at(-1)).toEqual([node2M(1), '0']);
    await expect(reserveHugepages({ size: '2M', count: 1, node: 5 }, { sysfs })).rejects.toBeInstanceOf(NotFoundError);
  });

  it('rolls back a partial allocation and reports it as a typed error', async () => {
    sysfs.hugepageCapacity.set('2048 0', 3);
    const before = await sysfs.snapshot();
    const error = await reserveHugepages({ size: '2M', count: 5, node: 0 }, { sysfs }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InsufficientHugepagesError);
    expect(error).toMatchObject({
      code: 'ERR_VMPOD_HUGEPAGES_INSUFFICIENT',
      previous: 0,
      requested: 5,
      obtained: 3,
      attempted: true,
      rolledBack: true,
      node: 0,
    });
    expect((error as Error).message).toMatch(/^asked for 5 more 2 MiB hugepages on NUMA node 0 \(pool 0 -> 5\), the kernel gave 3; the pool was put back to 0/u);
    expect(sysfs.writes).toEqual([
      [node2M(0), '5'],
      [node2M(0), '0'],
    ]);
    expect(await sysfs.snapshot()).toEqual(before);
  });

  it('keeps a partial allocation when allowed, and says so', async () => {
    await sysfs.file(GLOBAL_2M, '0');
    sysfs.hugepageCapacity.set('2048 0', 2);
    sysfs.hugepageCapacity.set('2048 1', 1);
    const r = await reserveHugepages({ size: '2M', count: 8, allowPartial: true }, { sysfs });
    expect([r.previous, r.requested, r.obtained, r.added, r.partial]).toEqual([0, 8, 3, 3, true]);
    await r.release();
    expect(sysfs.writes).toEqual([
      [GLOBAL_2M, '8'],
      [GLOBAL_2M, '0'],
    ]);
  });

  it('refuses more pages than the memory holds, before any write', async () => {
    // 2 nodes x 1 GiB = 1024 pages of 2 MiB at most.
    const error = await reserveHugepages({ size: '2M', count: 1025 }, { sysfs }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'ERR_VMPOD_HUGEPAGES_INSUFFICIENT', attempted: false, rolledBack: false, obtained: 0 });
    expect((error as Error).message).toMatch(/exceeds the memory of the host; nothing was changed/u);
    await expect(reserveHugepages({ size: '2M', count: 513, node: 1 }, { sysfs })).rejects.toMatchObject({ attempted: false, node: 1 });
    expect(sysfs.writes).toEqual([]);
  });

  it('bounds a node by its memory blocks when sysfs has them (meminfo can undercount)', async () => {
    // Node 1: meminfo says 1 GiB, but 16 blocks of 128 MiB = 2 GiB are there.
    await sysfs.file('devices/system/memory/block_size_bytes', '8000000');
    for (let b = 0; b < 16; b++) await sysfs.link(`devices/system/node/node1/memory${b}`, `../../memory/memory${b}`);
    const r = await reserveHugepages({ size: '2M', count: 1000, node: 1 }, { sysfs });
    expect(r.obtained).toBe(1000);
    await r.release();
    await expect(reserveHugepages({ size: '2M', count: 1025, node: 1 }, { sysfs })).rejects.toMatchObject({ attempted: false });
    await expect(reserveHugepages({ size: '2M', count: 513, node: 0 }, { sysfs })).rejects.toMatchObject({ attempted: false });
  });

  it('counts pages of other sizes already taken against the memory', async () => {
    await sysfs.addHugepages(1048576, [0, 1], 1024 * 1024);
    await sysfs.file('devices/system/node/node0/hugepages/hugepages-1048576kB/nr_hugepages', '1');
    await expect(reserveHugepages({ size: '2M', count: 1, node: 0 }, { sysfs })).rejects.toMatchObject({ attempted: false });
    const r = await reserveHugepages({ size: '2M', count: 1, node: 1 }, { sysfs });
    await r.release();
  });

  it('rejects a page size the host lacks, and bad counts, before any write', async () => {
    const error = await reserveHugepages({ size: '1G', count: 1 }, { sysfs }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UnsupportedHugepageSizeError);
    expect((error as Error).message).toBe('this host has no 1 GiB hugepages (supported: 2 MiB)');
    await expect(reserveHugepages({ size: '2M', count: 0 }, { sysfs })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(reserveHugepages({ size: '2M', count: 1.5 }, { sysfs })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(reserveHugepages({ size: '2M', count: 1, node: -1 }, { sysfs })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(mountHugetlbfs({ pageSize: '1G', parent: sysfs.path('mnt') }, { sysfs })).rejects.toBeInstanceOf(UnsupportedHugepageSizeError);
    await expect(mountHugetlbfs({ pageSize: '2M', sizeBytes: 3 * MiB }, { sysfs })).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(sysfs.writes).toEqual([]);
  });

  it('passes on a refused write (SystemError) with the pool unchanged, and rejects a tampered record', async () => {
    sysfs.failWrite.set(GLOBAL_2M, 'EINVAL');
    const before = await sysfs.snapshot();
    await expect(reserveHugepages({ size: '2M', count: 2 }, { sysfs })).rejects.toMatchObject({ code: 'ERR_VMPOD_SYSTEM', errnoName: 'EINVAL' });
    expect(sysfs.writes).toEqual([[GLOBAL_2M, '2']]);
    expect(await sysfs.snapshot()).toEqual(before);
    sysfs.writes.length = 0;
    for (const bad of [
      { sizeBytes: 3 * MiB, node: null, previous: 0, obtained: 1 },
      { sizeBytes: 2 * MiB, node: '0' as unknown as number, previous: 0, obtained: 1 },
      { sizeBytes: 2 * MiB, node: null, previous: 5, obtained: 1 },
      { sizeBytes: 2 * MiB, node: null, previous: -1, obtained: 1 },
    ]) {
      await expect(releaseHugepages(bad, { sysfs })).rejects.toBeInstanceOf(InvalidArgumentError);
    }
    expect(sysfs.writes).toEqual([]);
  });

  it('on release, removes only its own pages when someone else changed the pool meanwhile', async () => {
    await sysfs.file(GLOBAL_2M, '0');
    const r = await reserveHugepages({ size: '2M', count: 4 }, { sysfs });
    await sysfs.write(GLOBAL_2M, '10'); // another user
    const record = JSON.parse(JSON.stringify(r)) as HugepageReservationRecord; // persisted, then reloaded
    await releaseHugepages(record, { sysfs });
    expect(sysfs.writes.at(-1)).toEqual([GLOBAL_2M, '6']);
    expect((await hugepagePool('2M', { sysfs })).total).toBe(6);
  });
});

describe('hugepage reservations and releases at the same time (fake sysfs)', () => {
  it('two reservations at once each read the pool the other left, under the host lock', async () => {
    await sysfs.write(GLOBAL_2M, '10');
    sysfs.writes.length = 0;
    const [a, b] = await Promise.all([reserveHugepages({ size: '2M', count: 4 }, { sysfs }), reserveHugepages({ size: '2M', count: 4 }, { sysfs })]);
    const records = [a.toJSON(), b.toJSON()].sort((x, y) => x.previous - y.previous);
    expect(records).toEqual([
      { sizeBytes: 2 * MiB, node: null, previous: 10, obtained: 14 },
      { sizeBytes: 2 * MiB, node: null, previous: 14, obtained: 18 },
    ]);
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(18);
    // Released in the order they were made or not: each takes off its own 4 pages.
    expect(await a.release()).toMatchObject({ removed: 4 });
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(14);
    await b.release();
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(10);
    expect(await a.release()).toBeUndefined(); // idempotent
  });

  it('a release and a reservation at once: the release takes off only its pages', async () => {
    const a = await reserveHugepages({ size: '2M', count: 3 }, { sysfs });
    const [, b] = await Promise.all([a.release(), reserveHugepages({ size: '2M', count: 5 }, { sysfs })]);
    expect(b.added).toBe(5);
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(5);
    await b.release();
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(0);
  });

  it('records what the kernel actually gave, and releases exactly that, whoever came between', async () => {
    await sysfs.limitHugepages(2048, 0, 6);
    await sysfs.limitHugepages(2048, 1, 0);
    const a = await reserveHugepages({ size: '2M', count: 4 }, { sysfs });
    const b = await reserveHugepages({ size: '2M', count: 5, allowPartial: true }, { sysfs });
    expect([b.previous, b.obtained, b.added, b.partial]).toEqual([4, 6, 2, true]);
    const c = await reserveHugepages({ size: '2M', count: 1 }, { sysfs }).catch((e: unknown) => e);
    expect(c).toMatchObject({ code: 'ERR_VMPOD_HUGEPAGES_INSUFFICIENT', attempted: true, obtained: 6, rolledBack: true });
    expect(await a.release()).toEqual({ before: 6, removed: 4, after: 2, surplus: 0 });
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(2); // b's two pages are still there
    expect(await b.release()).toEqual({ before: 2, removed: 2, after: 0, surplus: 0 });
  });

  it('reports the pages still in use when the pool shrank (surplus), and never goes below 0', async () => {
    const r = await reserveHugepages({ size: '2M', count: 4 }, { sysfs });
    // The kernel turns pages still mapped into surplus pages instead of refusing to shrink.
    await sysfs.file('kernel/mm/hugepages/hugepages-2048kB/surplus_hugepages', '3');
    expect(await r.release()).toEqual({ before: 4, removed: 4, after: 0, surplus: 3 });
    // Someone shrank the pool without the lock: only what is there comes off.
    await sysfs.write(GLOBAL_2M, '2');
    expect(await releaseHugepages({ sizeBytes: 2 * MiB, node: null, previous: 0, obtained: 4 }, { sysfs })).toMatchObject({ before: 2, removed: 2, after: 0 });
  });
});

describe('hugepage reservations from several processes (fake sysfs)', () => {
  const worker = fileURLToPath(new URL('./devices-hugepages-worker.ts', import.meta.url));

  it('4 processes x 25 reserve/release cycles: the pool ends where it started and never holds fewer pages than reserved', async () => {
    // A pool of 10 pages that others made, and room for 24 in all: the workers ask for up to
    // 4 x 8 more, so some get part of what they asked (kept, or rolled back).
    await sysfs.write(GLOBAL_2M, '10');
    await sysfs.limitHugepages(2048, 0, 12);
    await sysfs.limitHugepages(2048, 1, 12);
    const reports = await runWorkers<HugepageWorkerOptions, HugepageWorkerReport>(
      worker,
      [0, 1, 2, 3].map((i) => ({ sysfs: sysfs.root, name: `w${i}`, cycles: 25, maxPages: 8, base: 10, checks: 5 })),
    );
    expect(reports.flatMap((r) => r.errors)).toEqual([]);
    expect(reports.flatMap((r) => r.violations)).toEqual([]);
    expect(reports.reduce((n, r) => n + r.reserved + r.insufficient, 0)).toBe(100);
    expect(reports.reduce((n, r) => n + r.reserved, 0)).toBeGreaterThan(0);
    // Back to 10 pages (the kernel may have moved them between the nodes: a global pool is global).
    const pool = await hugepagePool('2M', { sysfs });
    expect(pool.total).toBe(10);
    expect(pool.nodes.reduce((n, x) => n + x.total, 0)).toBe(10);
  }, 120_000);
});
