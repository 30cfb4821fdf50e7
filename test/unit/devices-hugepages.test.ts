import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError, NotFoundError } from '../../src/errors.js';
import {
  HugepageClaimExistsError,
  HugepageLedgerError,
  InsufficientHugepagesError,
  UnsupportedHugepageSizeError,
} from '../../src/devices/errors.js';
import { processAlive, processStartTime } from '../../src/devices/host-lock.js';
import {
  hugepageClaims,
  hugepagePool,
  hugepageSize,
  listHugepages,
  mountHugetlbfs,
  releaseHugepageClaim,
  releaseHugepages,
  reserveHugepages,
  type HugepageClaimStatus,
  type HugepageReservationRecord,
} from '../../src/devices/hugepages.js';
import { crashHugepageCall, FakeSysfs, type HugepageCrashResult } from './devices-fake-sysfs.js';
import type { HugepageWorkerOptions, HugepageWorkerReport } from './devices-hugepages-worker.js';
import { runWorkers } from './devices-workers.js';

const MiB = 1024 * 1024;
const GLOBAL_2M = 'kernel/mm/hugepages/hugepages-2048kB/nr_hugepages';
const node2M = (n: number): string => `devices/system/node/node${n}/hugepages/hugepages-2048kB/nr_hugepages`;
/** The ledger of the 2 MiB pools of the fake tree (in its lock folder). */
const LEDGER_2M = '.vmpod-lock/hugepages-2048kB.json';

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
    expect(r.toJSON()).toEqual({ sizeBytes: 2 * MiB, node: null, previous: 0, obtained: 6, claimId: expect.stringMatching(/^[0-9a-f-]{36}$/u) });
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
      { sizeBytes: 2 * MiB, node: null, previous: 10, obtained: 14, claimId: expect.any(String) },
      { sizeBytes: 2 * MiB, node: null, previous: 14, obtained: 18, claimId: expect.any(String) },
    ]);
    expect(a.claimId).not.toBe(b.claimId);
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
    expect(await a.release()).toEqual({ before: 6, removed: 4, after: 2, surplus: 0, alreadyReleased: false });
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(2); // b's two pages are still there
    expect(await b.release()).toEqual({ before: 2, removed: 2, after: 0, surplus: 0, alreadyReleased: false });
  });

  it('reports the pages still in use when the pool shrank (surplus), and never goes below 0', async () => {
    const r = await reserveHugepages({ size: '2M', count: 4 }, { sysfs });
    // The kernel turns pages still mapped into surplus pages instead of refusing to shrink: the
    // pool's persistent size is what was written, its nr_hugepages counts the surplus too.
    await sysfs.mapHugepages(2048, 3);
    expect(await r.release()).toEqual({ before: 4, removed: 4, after: 0, surplus: 3, alreadyReleased: false });
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(3);
    await sysfs.mapHugepages(2048, 0);
    await sysfs.write(GLOBAL_2M, '0'); // (the kernel frees surplus pages by itself once unmapped)
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
    expect(await hugepageClaims({ sysfs })).toEqual([]);
  }, 120_000);

  it('4 processes x 25 cycles while others are killed half-way: releasing the dead claims by id puts the pool exactly where it started', async () => {
    await sysfs.write(GLOBAL_2M, '10');
    await sysfs.limitHugepages(2048, 0, 14);
    await sysfs.limitHugepages(2048, 1, 14);
    const workers = runWorkers<HugepageWorkerOptions, HugepageWorkerReport>(
      worker,
      [0, 1, 2, 3].map((i) => ({ sysfs: sysfs.root, name: `w${i}`, cycles: 25, maxPages: 6, base: 10, checks: 3 })),
    );
    // Meanwhile, 8 reservations die at a write (the reservation's, the roll-back's, or their
    // release's), before or after it reaches the kernel, or finish and leave their claim behind.
    const crashes: HugepageCrashResult[] = [];
    const ids: string[] = [];
    for (let round = 0; round < 4; round++) {
      crashes.push(
        ...(await Promise.all(
          [0, 1].map((k) => {
            const claimId = `crash-${round}-${k}`;
            ids.push(claimId);
            return crashHugepageCall({
              sysfs: sysfs.root,
              steps: [
                { reserve: { size: '2M', count: 1 + ((round * 2 + k) % 6), allowPartial: k === 0, claimId, owner: `crash ${round}.${k}` } },
                ...(round % 2 === 0 ? [{ releaseClaim: { claimId } }] : []),
              ],
              kill: { write: 1 + ((round + k) % 2), when: k === 0 ? 'before' : 'after' },
            });
          }),
        )),
      );
    }
    const reports = await workers;
    expect(reports.flatMap((r) => r.errors)).toEqual([]);
    expect(reports.flatMap((r) => r.violations)).toEqual([]);
    expect(crashes.filter((c) => c.signal !== 'SIGKILL' && c.code !== 0).map((c) => c.stderr)).toEqual([]);
    expect(crashes.some((c) => c.signal === 'SIGKILL')).toBe(true);
    // Every claim left is one of the dead (or finished) children's, settled by whoever came next.
    const left = await hugepageClaims({ sysfs });
    expect(left.every((c) => ids.includes(c.claimId) && c.state === 'held' && !c.alive)).toBe(true);
    const held = left.reduce((n, c) => n + c.added, 0);
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(10 + held);
    for (const id of ids) await releaseHugepageClaim(id, { sysfs });
    expect(await hugepageClaims({ sysfs })).toEqual([]);
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(10);
    for (const id of ids) expect(await releaseHugepageClaim(id, { sysfs })).toBeUndefined();
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(10);
  }, 120_000);
});

describe('the hugepage ledger: every reservation a claim, every release exact and once (fake sysfs)', () => {
  it('writes the claim (0600) before nr_hugepages, settles it after the read-back, and a release removes it', async () => {
    await sysfs.write(GLOBAL_2M, '10');
    // What the ledger says at the moment vmpod writes nr_hugepages.
    const seen: HugepageClaimStatus[][] = [];
    class Spy extends FakeSysfs {
      override async write(rel: string, value: string): Promise<void> {
        if (rel.endsWith('nr_hugepages')) seen.push(await hugepageClaims({ sysfs: this }));
        await super.write(rel, value);
      }
    }
    const spy = new Spy(sysfs.root);
    const r = await reserveHugepages({ size: '2M', count: 4 }, { sysfs: spy, owner: 'sandbox one', claimId: 'claim-one' });
    expect(seen).toEqual([
      [
        {
          claimId: 'claim-one',
          owner: 'sandbox one',
          pid: process.pid,
          pidStart: await processStartTime(process.pid),
          since: expect.stringMatching(/^\d{4}-\d\d-\d\dT/u),
          sizeBytes: 2 * MiB,
          node: null,
          state: 'writing',
          count: 4,
          previous: 10,
          added: 0,
          writer: { pid: process.pid, pidStart: await processStartTime(process.pid) },
          alive: true,
          ledger: sysfs.path(LEDGER_2M),
        },
      ],
    ]);
    expect(r.claimId).toBe('claim-one');
    expect(r.toJSON()).toEqual({ sizeBytes: 2 * MiB, node: null, previous: 10, obtained: 14, claimId: 'claim-one' });
    const [claim] = await hugepageClaims({ sysfs });
    expect(claim).toMatchObject({ claimId: 'claim-one', state: 'held', previous: 10, added: 4, count: 4, alive: true });
    expect(claim).not.toHaveProperty('writer');
    expect((await fs.stat(sysfs.path(LEDGER_2M))).mode & 0o777).toBe(0o600);
    expect(await r.release()).toEqual({ before: 14, removed: 4, after: 10, surplus: 0, alreadyReleased: false });
    expect(await hugepageClaims({ sysfs })).toEqual([]);
    expect(await fs.readdir(sysfs.path('.vmpod-lock'))).toEqual(['hugepages-2048kB.lock']); // no claim left: no ledger, no temp file
  });

  it('a record released twice gives its pages back once: the second release is a no-op that says so, whoever added pages since', async () => {
    await sysfs.write(GLOBAL_2M, '10');
    const a = await reserveHugepages({ size: '2M', count: 4 }, { sysfs });
    const saved = JSON.stringify(a); // the caller's state
    expect(await releaseHugepages(JSON.parse(saved) as HugepageReservationRecord, { sysfs })).toMatchObject({ before: 14, removed: 4, after: 10 });
    // The caller crashed before noting that it released; another sandbox reserves meanwhile.
    const b = await reserveHugepages({ size: '2M', count: 3 }, { sysfs });
    const writes = sysfs.writes.length;
    const again = await releaseHugepages(JSON.parse(saved) as HugepageReservationRecord, { sysfs });
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(13); // b's pages stay
    expect(sysfs.writes.length).toBe(writes); // nothing written
    expect(again).toEqual({ before: 13, removed: 0, after: 13, surplus: 0, alreadyReleased: true });
    expect(await a.release()).toMatchObject({ removed: 0, alreadyReleased: true }); // the object too
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(13);
    await b.release();
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(10);
  });

  it('releases a record without claimId (older versions) as before, current - (obtained - previous), each time', async () => {
    await sysfs.write(GLOBAL_2M, '12');
    const old = { sizeBytes: 2 * MiB, node: null, previous: 10, obtained: 12 };
    expect(await releaseHugepages(old, { sysfs })).toEqual({ before: 12, removed: 2, after: 10, surplus: 0, alreadyReleased: false });
    expect(await releaseHugepages(old, { sysfs })).toEqual({ before: 10, removed: 2, after: 8, surplus: 0, alreadyReleased: false });
  });

  it('takes the claim id from the caller, refuses one the ledger holds already, and checks ids and owners, before any write', async () => {
    const r = await reserveHugepages({ size: '2M', count: 2 }, { sysfs, claimId: 'sb-1:hugepages', owner: 'sandbox sb-1' });
    const writes = sysfs.writes.length;
    const error = await reserveHugepages({ size: '2M', count: 2 }, { sysfs, claimId: 'sb-1:hugepages' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HugepageClaimExistsError);
    expect(error).toMatchObject({ code: 'ERR_VMPOD_HUGEPAGE_CLAIM_EXISTS', claimId: 'sb-1:hugepages', holder: { owner: 'sandbox sb-1', added: 2 } });
    for (const claimId of ['', 'a b', '../x', 'x'.repeat(129), 7]) {
      await expect(reserveHugepages({ size: '2M', count: 1 }, { sysfs, claimId: claimId as string })).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(releaseHugepageClaim(claimId as string, { sysfs })).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(releaseHugepages({ ...r.toJSON(), claimId: claimId as string }, { sysfs })).rejects.toBeInstanceOf(InvalidArgumentError);
    }
    await expect(reserveHugepages({ size: '2M', count: 1 }, { sysfs, owner: 'line\nbreak' })).rejects.toBeInstanceOf(InvalidArgumentError);
    // A record whose node is not its claim's: refused, not guessed.
    await expect(releaseHugepages({ ...r.toJSON(), node: 1 }, { sysfs })).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(sysfs.writes.length).toBe(writes);
    expect((await hugepageClaims({ sysfs })).map((c) => c.claimId)).toEqual(['sb-1:hugepages']);
    await r.release();
  });

  it('releaseHugepageClaim gives back what the ledger says a claim holds, once; undefined for a claim it does not hold', async () => {
    await sysfs.write(GLOBAL_2M, '10');
    await reserveHugepages({ size: '2M', count: 5, node: 1 }, { sysfs, claimId: 'c1' });
    const other = await reserveHugepages({ size: '2M', count: 2 }, { sysfs });
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(17);
    expect(await releaseHugepageClaim('c1', { sysfs })).toEqual({ before: 5, removed: 5, after: 0, surplus: 0, alreadyReleased: false });
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(12);
    expect(await releaseHugepageClaim('c1', { sysfs })).toBeUndefined();
    expect(await releaseHugepageClaim('c1', { sysfs, size: '2M' })).toBeUndefined();
    expect(await releaseHugepageClaim('never-made', { sysfs })).toBeUndefined();
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(12);
    await other.release();
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(10);
  });

  it('keeps no claim for a reservation that was rolled back or got nothing', async () => {
    sysfs.hugepageCapacity.set('2048 0', 3);
    sysfs.hugepageCapacity.set('2048 1', 0);
    await expect(reserveHugepages({ size: '2M', count: 5 }, { sysfs, claimId: 'rolled-back' })).rejects.toMatchObject({ rolledBack: true });
    expect(await hugepageClaims({ sysfs })).toEqual([]);
    sysfs.hugepageCapacity.set('2048 0', 0);
    const none = await reserveHugepages({ size: '2M', count: 5, allowPartial: true }, { sysfs, claimId: 'got-nothing' });
    expect([none.added, none.claimId]).toEqual([0, 'got-nothing']);
    expect(await hugepageClaims({ sysfs })).toEqual([]);
    expect(await none.release()).toMatchObject({ removed: 0, alreadyReleased: true });
    expect(await releaseHugepageClaim('rolled-back', { sysfs })).toBeUndefined();
  });

  it('refuses a ledger it cannot read, before any write', async () => {
    await fs.mkdir(sysfs.path('.vmpod-lock'), { mode: 0o700 });
    await fs.writeFile(sysfs.path(LEDGER_2M), '{"version":1,"claims":[{"claimId":"x"', { mode: 0o600 });
    const error = await reserveHugepages({ size: '2M', count: 1 }, { sysfs }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HugepageLedgerError);
    expect(error).toMatchObject({ code: 'ERR_VMPOD_HUGEPAGE_LEDGER', path: sysfs.path(LEDGER_2M) });
    await expect(releaseHugepages({ sizeBytes: 2 * MiB, node: null, previous: 0, obtained: 1 }, { sysfs })).rejects.toBeInstanceOf(HugepageLedgerError);
    await expect(hugepageClaims({ sysfs })).rejects.toBeInstanceOf(HugepageLedgerError);
    expect(sysfs.writes).toEqual([]);
  });

  it('tells a live owner from a dead one by pid and start time, not by pid alone', async () => {
    const start = (await processStartTime(process.pid))!;
    expect(start).toBeGreaterThan(0);
    expect(await processAlive(process.pid, start)).toBe(true);
    expect(await processAlive(process.pid, start + 1)).toBe(false); // the same pid, another process
    const child = spawn('sleep', ['30']);
    const exited = new Promise((resolve) => child.on('exit', resolve));
    const childStart = (await processStartTime(child.pid!))!;
    expect(await processAlive(child.pid!, childStart)).toBe(true);
    child.kill('SIGKILL');
    await exited;
    expect(await processAlive(child.pid!, childStart)).toBe(false);
    // A claim in the ledger made by a process that had this pid before: not alive.
    await fs.mkdir(sysfs.path('.vmpod-lock'), { mode: 0o700 });
    const entry = { claimId: 'old', owner: 'sandbox old', pid: process.pid, pidStart: start - 1, since: new Date().toISOString(), sizeBytes: 2 * MiB, node: null, state: 'held', count: 1, previous: 0, added: 1 };
    await fs.writeFile(sysfs.path(LEDGER_2M), JSON.stringify({ version: 1, sizeBytes: 2 * MiB, claims: [entry] }), { mode: 0o600 });
    expect(await hugepageClaims({ sysfs })).toEqual([{ ...entry, alive: false, ledger: sysfs.path(LEDGER_2M) }]);
  });
});

describe('a reservation or release killed half-way (fake sysfs, child processes killed with SIGKILL)', () => {
  it('killed after writing its claim, before nr_hugepages: the next locker drops the claim, the pool is untouched', async () => {
    await sysfs.write(GLOBAL_2M, '10');
    const child = await crashHugepageCall({
      sysfs: sysfs.root,
      steps: [{ reserve: { size: '2M', count: 5, claimId: 'dead-before', owner: 'sandbox dead' } }],
      kill: { write: 1, when: 'before' },
    });
    expect([child.signal, child.results]).toEqual(['SIGKILL', []]);
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(10);
    expect(await hugepageClaims({ sysfs })).toMatchObject([
      { claimId: 'dead-before', owner: 'sandbox dead', pid: child.pid, state: 'writing', previous: 10, count: 5, added: 0, alive: false, writer: { pid: child.pid } },
    ]);
    // The next process to take the lock settles it first: the pool did not grow, so the claim goes.
    const mine = await reserveHugepages({ size: '2M', count: 2 }, { sysfs });
    expect(mine.toJSON()).toMatchObject({ previous: 10, obtained: 12 });
    expect((await hugepageClaims({ sysfs })).map((c) => c.claimId)).toEqual([mine.claimId]);
    expect(await releaseHugepageClaim('dead-before', { sysfs })).toBeUndefined();
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(12);
    await mine.release();
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(10);
  });

  it('killed after writing nr_hugepages, before settling its claim: the next reservation settles it at what the kernel gave, and its release gives back exactly that', async () => {
    await sysfs.write(GLOBAL_2M, '10'); // on node 0
    await sysfs.limitHugepages(2048, 0, 13); // room for 3 of the 5 it asks
    await sysfs.limitHugepages(2048, 1, 0);
    const child = await crashHugepageCall({
      sysfs: sysfs.root,
      steps: [{ reserve: { size: '2M', count: 5, claimId: 'dead-after' } }],
      kill: { write: 1, when: 'after' },
    });
    expect(child.signal).toBe('SIGKILL');
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(13); // a partial allocation it had no time to roll back
    expect(await hugepageClaims({ sysfs })).toMatchObject([{ claimId: 'dead-after', state: 'writing', previous: 10, count: 5, added: 0 }]);
    await sysfs.limitHugepages(2048, 0, 100);
    const mine = await reserveHugepages({ size: '2M', count: 4 }, { sysfs });
    expect(mine.toJSON()).toMatchObject({ previous: 13, obtained: 17 });
    expect(await hugepageClaims({ sysfs })).toMatchObject([
      { claimId: 'dead-after', state: 'held', previous: 10, count: 5, added: 3, alive: false },
      { claimId: mine.claimId, state: 'held', previous: 13, added: 4, alive: true },
    ]);
    // 3 pages, not the 5 it asked for: the 4 of the live reservation stay.
    expect(await releaseHugepageClaim('dead-after', { sysfs })).toMatchObject({ before: 17, removed: 3, after: 14 });
    expect(await releaseHugepageClaim('dead-after', { sysfs })).toBeUndefined();
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(14);
    await mine.release();
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(10);
  });

  it('killed after writing nr_hugepages: a release is the next locker, it settles the dead claim first and removes only its own pages', async () => {
    await sysfs.write(GLOBAL_2M, '10');
    const b = await reserveHugepages({ size: '2M', count: 2 }, { sysfs }); // 12
    const child = await crashHugepageCall({ sysfs: sysfs.root, steps: [{ reserve: { size: '2M', count: 5, claimId: 'dead-after' } }], kill: { write: 1, when: 'after' } });
    expect(child.signal).toBe('SIGKILL');
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(17);
    expect(await b.release()).toMatchObject({ before: 17, removed: 2, after: 15 });
    expect(await hugepageClaims({ sysfs })).toMatchObject([{ claimId: 'dead-after', state: 'held', previous: 12, added: 5 }]);
    expect(await releaseHugepageClaim('dead-after', { sysfs })).toMatchObject({ removed: 5, after: 10 });
    expect(await hugepageClaims({ sysfs })).toEqual([]);
  });

  it('killed while rolling back a partial allocation: settled at what is left, nothing when the roll-back got through', async () => {
    await sysfs.write(GLOBAL_2M, '10');
    await sysfs.limitHugepages(2048, 0, 13);
    await sysfs.limitHugepages(2048, 1, 0);
    // Write 2 is the roll-back: killed after it, so the pool is back at 10.
    const child = await crashHugepageCall({ sysfs: sysfs.root, steps: [{ reserve: { size: '2M', count: 5, claimId: 'dead-rollback' } }], kill: { write: 2, when: 'after' } });
    expect(child.signal).toBe('SIGKILL');
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(10);
    expect(await releaseHugepageClaim('dead-rollback', { sysfs })).toBeUndefined();
    expect(await hugepageClaims({ sysfs })).toEqual([]);
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(10);
  });

  it('killed during a release, after writing nr_hugepages: settled as released, so releasing it again removes nothing', async () => {
    await sysfs.write(GLOBAL_2M, '10');
    const child = await crashHugepageCall({
      sysfs: sysfs.root,
      steps: [{ reserve: { size: '2M', count: 4, claimId: 'dying-release' } }, { releaseClaim: { claimId: 'dying-release' } }],
      kill: { write: 2, when: 'after' },
    });
    expect(child.signal).toBe('SIGKILL');
    expect(child.results).toEqual([{ sizeBytes: 2 * MiB, node: null, previous: 10, obtained: 14, claimId: 'dying-release' }]);
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(10);
    expect(await hugepageClaims({ sysfs })).toMatchObject([{ claimId: 'dying-release', state: 'releasing', added: 4, before: 14, writer: { pid: child.pid } }]);
    const other = await reserveHugepages({ size: '2M', count: 3 }, { sysfs }); // settles it, then 13
    expect((await hugepageClaims({ sysfs })).map((c) => c.claimId)).toEqual([other.claimId]);
    expect(await releaseHugepageClaim('dying-release', { sysfs })).toBeUndefined();
    expect(await releaseHugepages(child.results[0] as HugepageReservationRecord, { sysfs })).toMatchObject({ removed: 0, alreadyReleased: true });
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(13);
    await other.release();
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(10);
  });

  it('a claim whose owner exited stays (held) until released by its id', async () => {
    await sysfs.write(GLOBAL_2M, '10');
    const child = await crashHugepageCall({ sysfs: sysfs.root, steps: [{ reserve: { size: '2M', count: 3, claimId: 'orphan', owner: 'sandbox gone' } }] });
    expect([child.signal, child.code]).toEqual([null, 0]);
    const other = await reserveHugepages({ size: '2M', count: 1 }, { sysfs });
    await other.release();
    expect(await hugepageClaims({ sysfs })).toMatchObject([{ claimId: 'orphan', owner: 'sandbox gone', state: 'held', added: 3, alive: false }]);
    expect(await sysfs.readInt(GLOBAL_2M)).toBe(13);
    expect(await releaseHugepageClaim('orphan', { sysfs, size: 2 * MiB })).toMatchObject({ removed: 3, after: 10 });
  });
});

