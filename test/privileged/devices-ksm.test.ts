/**
 * vmpod's KSM reader against this host's /sys/kernel/mm/ksm (read-only: nothing is written), and
 * the kernel's own refusal of merge_across_nodes while pages are merged, which the unit test's
 * fake imitates: one write that the kernel refuses, the setting restored should it take it.
 */
import { existsSync, readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { configureKsm, readKsm, ksmProcessStats, systemPageSize } from '../../src/devices/ksm.js';
import { SystemError } from '../../src/errors.js';
import { Sysfs } from '../../src/devices/sysfs.js';

const KSM = '/sys/kernel/mm/ksm';
const SETTINGS = ['run', 'pages_to_scan', 'sleep_millisecs', 'merge_across_nodes', 'max_page_sharing', 'use_zero_pages', 'stable_node_chains_prune_millisecs', 'smart_scan'];

/** The real /sys, with writes forbidden: this test must not change KSM. */
class ReadOnlySysfs extends Sysfs {
  override async write(rel: string): Promise<void> {
    throw new Error(`test guard: refused a write to ${rel}`);
  }
}

async function settingsFiles(): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of SETTINGS) {
    const p = `${KSM}/${f}`;
    if (existsSync(p)) out[f] = (await fs.readFile(p, 'utf8')).trim();
  }
  return out;
}

describe('KSM on this host (read-only)', () => {
  it.skipIf(!existsSync(`${KSM}/run`))('reads the real settings and counters and changes nothing', async () => {
    const before = await settingsFiles();
    const status = await readKsm({ sysfs: new ReadOnlySysfs('/sys') });
    const s = status.settings;
    expect(s.run).toBe(Number(before['run']));
    expect(s.pagesToScan).toBe(Number(before['pages_to_scan']));
    expect(s.sleepMillisecs).toBe(Number(before['sleep_millisecs']));
    if (before['merge_across_nodes'] !== undefined) expect(s.mergeAcrossNodes).toBe(before['merge_across_nodes'] === '1');
    if (before['max_page_sharing'] !== undefined) expect(s.maxPageSharing).toBe(Number(before['max_page_sharing']));
    if (before['smart_scan'] !== undefined) expect(s.smartScan).toBe(before['smart_scan'] === '1');
    for (const v of Object.values(status.stats)) if (v !== null) expect(Number.isInteger(v) && v >= 0).toBe(true);
    expect(status.pageSize).toBe(await systemPageSize());
    expect(status.savedBytes).toBe((status.stats.pagesSharing + (status.stats.ksmZeroPages ?? 0)) * status.pageSize);
    expect(await settingsFiles()).toEqual(before);
  });

  it.skipIf(!existsSync('/proc/self/ksm_stat'))('reads the KSM counters of a process (this one)', async () => {
    const stats = await ksmProcessStats(process.pid);
    const merging = Number((await fs.readFile(`/proc/${process.pid}/ksm_merging_pages`, 'utf8')).trim());
    expect(stats.mergingPages).toBe(merging);
    expect(typeof stats.mergeable).toBe('boolean');
    expect(stats.zeroPages).toBeGreaterThanOrEqual(0);
  });
});

const MERGE_ACROSS_NODES = `${KSM}/merge_across_nodes`;
const sharedNow = existsSync(`${KSM}/pages_shared`) ? Number(readFileSync(`${KSM}/pages_shared`, 'utf8').trim()) : 0;
const refusalReason = !existsSync(MERGE_ACROSS_NODES)
  ? 'no merge_across_nodes here (a kernel without NUMA)'
  : process.getuid?.() !== 0
    ? 'needs root'
    : sharedNow === 0
      ? 'no merged pages here now (pages_shared is 0): the kernel would take the write'
      : undefined;

describe('KSM on this host: the kernel refuses merge_across_nodes while pages are merged', () => {
  it.skipIf(refusalReason !== undefined)(`configureKsm reports the kernel's EBUSY and leaves every setting as it was${refusalReason ? ` (skipped: ${refusalReason})` : ''}`, async () => {
    const before = await settingsFiles();
    const wanted = before['merge_across_nodes'] !== '1';
    try {
      const error = await configureKsm({ mergeAcrossNodes: wanted }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(SystemError);
      expect(error).toMatchObject({ errnoName: 'EBUSY' });
    } finally {
      // Should the pages have gone in the meantime, the kernel took the write: put it back.
      if ((await fs.readFile(MERGE_ACROSS_NODES, 'utf8')).trim() !== before['merge_across_nodes']) {
        await fs.writeFile(MERGE_ACROSS_NODES, `${before['merge_across_nodes']}\n`);
      }
    }
    expect(await settingsFiles()).toEqual(before);
  });
});
