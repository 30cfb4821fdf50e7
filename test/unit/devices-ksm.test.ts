import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { FeatureUnavailableError } from '../../src/devices/errors.js';
import { configureKsm, ksmAvailable, ksmProcessStats, readKsm, restoreKsm, systemPageSize } from '../../src/devices/ksm.js';
import { FakeSysfs } from './devices-fake-sysfs.js';

const KSM = 'kernel/mm/ksm';
/** A 6.x kernel's KSM, stopped, with some pages merged earlier. */
const DEFAULTS = {
  run: '0',
  pages_to_scan: '100',
  sleep_millisecs: '20',
  merge_across_nodes: '1',
  max_page_sharing: '256',
  use_zero_pages: '0',
  stable_node_chains_prune_millisecs: '2000',
  smart_scan: '1',
  pages_shared: '0',
  pages_sharing: '0',
  pages_unshared: '0',
  pages_volatile: '0',
  full_scans: '0',
  ksm_zero_pages: '0',
  general_profit: '0',
};

let sysfs: FakeSysfs;
beforeEach(async () => {
  sysfs = await FakeSysfs.create();
  await sysfs.addKsm(DEFAULTS);
});
afterEach(async () => {
  await sysfs.cleanup();
});

describe('KSM (fake sysfs)', () => {
  it('reads settings, counters and the memory saved', async () => {
    await sysfs.addKsm({ run: '1', pages_shared: '120', pages_sharing: '900', pages_unshared: '5000', pages_volatile: '7', full_scans: '3', ksm_zero_pages: '40', general_profit: '3500000' });
    expect(await ksmAvailable({ sysfs })).toBe(true);
    expect(await readKsm({ sysfs, pageSize: 4096 })).toEqual({
      settings: {
        run: 1,
        pagesToScan: 100,
        sleepMillisecs: 20,
        mergeAcrossNodes: true,
        maxPageSharing: 256,
        useZeroPages: false,
        stableNodeChainsPruneMillisecs: 2000,
        smartScan: true,
      },
      stats: { pagesShared: 120, pagesSharing: 900, pagesUnshared: 5000, pagesVolatile: 7, fullScans: 3, ksmZeroPages: 40, generalProfit: 3500000 },
      pageSize: 4096,
      savedBytes: (900 + 40) * 4096,
    });
  });

  it('reads an older kernel without the newer attributes', async () => {
    const old = await FakeSysfs.create();
    try {
      await old.addKsm({ run: '0', pages_to_scan: '100', sleep_millisecs: '20', pages_shared: '1', pages_sharing: '2', pages_unshared: '3', pages_volatile: '4', full_scans: '5' });
      const status = await readKsm({ sysfs: old, pageSize: 65536 });
      expect(status.settings).toEqual({ run: 0, pagesToScan: 100, sleepMillisecs: 20 });
      expect(status.stats.ksmZeroPages).toBeNull();
      expect(status.stats.generalProfit).toBeNull();
      expect(status.savedBytes).toBe(2 * 65536);
      await expect(configureKsm({ run: 1, smartScan: false }, { sysfs: old })).rejects.toBeInstanceOf(FeatureUnavailableError);
      expect(old.writes).toEqual([]);
    } finally {
      await old.cleanup();
    }
  });

  it('tunes and starts KSM (run last), then restores the previous settings (stop first)', async () => {
    const before = await sysfs.snapshot();
    const config = await configureKsm({ run: 1, pagesToScan: 1000, sleepMillisecs: 50, useZeroPages: true }, { sysfs });
    expect(sysfs.writes).toEqual([
      [`${KSM}/use_zero_pages`, '1'],
      [`${KSM}/pages_to_scan`, '1000'],
      [`${KSM}/sleep_millisecs`, '50'],
      [`${KSM}/run`, '1'],
    ]);
    expect(config.previous).toEqual({ run: 0, pagesToScan: 100, sleepMillisecs: 20, useZeroPages: false });
    expect(config.applied).toEqual({ run: 1, pagesToScan: 1000, sleepMillisecs: 50, useZeroPages: true });
    expect((await readKsm({ sysfs })).settings).toMatchObject({ run: 1, pagesToScan: 1000, sleepMillisecs: 50, useZeroPages: true });

    sysfs.writes.length = 0;
    await config.restore();
    await config.restore(); // idempotent
    expect(sysfs.writes).toEqual([
      [`${KSM}/run`, '0'],
      [`${KSM}/use_zero_pages`, '0'],
      [`${KSM}/pages_to_scan`, '100'],
      [`${KSM}/sleep_millisecs`, '20'],
    ]);
    expect(await sysfs.snapshot()).toEqual(before);
  });

  it('restores from a persisted record', async () => {
    const config = await configureKsm({ run: 1, maxPageSharing: 64 }, { sysfs });
    await restoreKsm(JSON.parse(JSON.stringify(config.previous)), { sysfs });
    expect((await readKsm({ sysfs })).settings).toMatchObject({ run: 0, maxPageSharing: 256 });
  });

  it('undoes what it wrote when a later write fails', async () => {
    await sysfs.addKsm({ pages_shared: '10', run: '1' });
    const before = await sysfs.snapshot();
    // merge_across_nodes cannot change while pages are merged: EBUSY after pages_to_scan... order puts it first,
    // so make a later write fail instead.
    sysfs.failWrite.set(`${KSM}/sleep_millisecs`, 'EINVAL');
    const error = await configureKsm({ pagesToScan: 500, sleepMillisecs: 10 }, { sysfs }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'ERR_VMPOD_SYSTEM', errnoName: 'EINVAL' });
    expect(sysfs.writes).toEqual([
      [`${KSM}/pages_to_scan`, '500'],
      [`${KSM}/sleep_millisecs`, '10'],
      [`${KSM}/pages_to_scan`, '100'],
    ]);
    expect(await sysfs.snapshot()).toEqual(before);
  });

  it('reports the kernel refusing merge_across_nodes while pages are merged, leaving all as it was', async () => {
    await sysfs.addKsm({ pages_shared: '10', run: '1' });
    const before = await sysfs.snapshot();
    const error = await configureKsm({ mergeAcrossNodes: false, pagesToScan: 300 }, { sysfs }).catch((e: unknown) => e);
    expect(error).toMatchObject({ errnoName: 'EBUSY' });
    expect(await sysfs.snapshot()).toEqual(before);
    // Stopping with unmerge first makes it possible: run=2 goes first, and (as in the kernel)
    // unmerges the 10 shared pages before merge_across_nodes is written.
    sysfs.writes.length = 0;
    await configureKsm({ run: 2, mergeAcrossNodes: false }, { sysfs });
    expect(sysfs.writes).toEqual([
      [`${KSM}/run`, '2'],
      [`${KSM}/merge_across_nodes`, '0'],
    ]);
    expect(await sysfs.read('kernel/mm/ksm/pages_shared')).toBe('0');
    expect(await sysfs.read('kernel/mm/ksm/merge_across_nodes')).toBe('0');
  });

  it('rejects bad values before any write, and a kernel without KSM', async () => {
    await expect(configureKsm({ run: 3 as 1 }, { sysfs })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(configureKsm({ pagesToScan: -1 }, { sysfs })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(configureKsm({ maxPageSharing: 1 }, { sysfs })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(configureKsm({ run: 1, mergeAcrossNodes: 1 as unknown as boolean }, { sysfs })).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(sysfs.writes).toEqual([]);
    const none = await FakeSysfs.create();
    try {
      expect(await ksmAvailable({ sysfs: none })).toBe(false);
      await expect(readKsm({ sysfs: none })).rejects.toBeInstanceOf(FeatureUnavailableError);
      await expect(configureKsm({ run: 1 }, { sysfs: none })).rejects.toBeInstanceOf(FeatureUnavailableError);
    } finally {
      await none.cleanup();
    }
  });
});

describe('KSM per process and page size', () => {
  it('parses /proc/PID/ksm_stat', async () => {
    const proc = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-fake-proc-'));
    try {
      await fs.mkdir(path.join(proc, '4242'));
      await fs.writeFile(
        path.join(proc, '4242', 'ksm_stat'),
        'ksm_rmap_items 5000\nksm_zero_pages 12\nksm_merging_pages 830\nksm_process_profit 3100000\nksm_merge_any: no\nksm_mergeable: yes\n',
      );
      expect(await ksmProcessStats(4242, { proc })).toEqual({ mergingPages: 830, zeroPages: 12, profit: 3100000, mergeable: true });
      await expect(ksmProcessStats(4243, { proc })).rejects.toBeInstanceOf(FeatureUnavailableError);
      await expect(ksmProcessStats(0, { proc })).rejects.toBeInstanceOf(InvalidArgumentError);
    } finally {
      await fs.rm(proc, { recursive: true, force: true });
    }
  });

  it('finds the page size getconf reports', async () => {
    const { stdout } = await promisify(execFile)('getconf', ['PAGESIZE']);
    expect(await systemPageSize()).toBe(Number(stdout.trim()));
  });
});
