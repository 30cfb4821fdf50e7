/**
 * The real KSM of this host refusing merge_across_nodes while pages are merged: a helper process
 * offers 256 identical pages to KSM (madvise MADV_MERGEABLE), ksmd is run until some of them are merged,
 * then configureKsm({ run: 0, mergeAcrossNodes, pagesToScan }) must fail with EBUSY and leave every
 * KSM knob as it was (the run=0 written before it put back: stopping ksmd does not unmerge). Every knob this test touches is
 * saved first and written back in `finally`; the helper's pages unmerge when it exits.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { configureKsm, readKsm } from '../../src/devices/ksm.js';

const KSM = '/sys/kernel/mm/ksm';
const KNOBS = ['run', 'pages_to_scan', 'sleep_millisecs', 'merge_across_nodes', 'max_page_sharing', 'use_zero_pages', 'stable_node_chains_prune_millisecs', 'smart_scan'];
const skipReason =
  process.getuid?.() !== 0
    ? 'needs root'
    : !existsSync(`${KSM}/merge_across_nodes`)
      ? 'this kernel has no KSM merge_across_nodes'
      : !existsSync('/proc/self/ksm_merging_pages')
        ? 'this kernel has no /proc/PID/ksm_merging_pages (Linux 5.19+) to see the helper\'s pages merged'
        : undefined;

// 256 pages of the same bytes, offered to KSM; "ready" once advised; lives until stdin closes.
const MERGEABLE_PAGES = [
  'import mmap, sys',
  'm = mmap.mmap(-1, 256 * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)',
  'm.write(b"vmpod-ksm-busy " * (256 * mmap.PAGESIZE // 15))',
  'm.madvise(mmap.MADV_MERGEABLE)',
  'print("ready", flush=True)',
  'sys.stdin.read()',
].join('\n');

async function knobs(): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of KNOBS) if (existsSync(`${KSM}/${f}`)) out[f] = (await fs.readFile(`${KSM}/${f}`, 'utf8')).trim();
  return out;
}

/** How many of process PID's pages KSM has merged (/proc/PID/ksm_merging_pages). */
async function mergingPages(pid: number): Promise<number> {
  return Number((await fs.readFile(`/proc/${pid}/ksm_merging_pages`, 'utf8')).trim());
}

describe.skipIf(skipReason)(`KSM merge_across_nodes on this host${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  it('is refused with EBUSY while pages are shared; nothing is left changed', async () => {
    const saved = await knobs();
    let helper: ChildProcess | undefined;
    try {
      helper = spawn('python3', ['-c', MERGEABLE_PAGES], { stdio: ['pipe', 'pipe', 'inherit'] });
      await new Promise<void>((resolve, reject) => {
        helper!.once('error', reject);
        helper!.once('exit', (code) => reject(new Error(`the page helper exited (${code})`)));
        helper!.stdout!.on('data', (d: Buffer) => {
          if (d.toString().includes('ready')) resolve();
        });
      });
      // ksmd scans fast until the helper's own pages are merged. Pages shared by someone else
      // (a VM of another test) are no precondition: they can be unmerged by the time of the
      // write, and the kernel then takes the change (seen in a shuffled CI run).
      await configureKsm({ pagesToScan: 4096, sleepMillisecs: 10, run: 1 });
      const deadline = Date.now() + 60_000;
      while ((await mergingPages(helper.pid!)) === 0 || (await readKsm()).stats.pagesShared === 0) {
        if (Date.now() > deadline) throw new Error('KSM merged none of the helper\'s pages within 60 s');
        await new Promise((r) => setTimeout(r, 100));
      }
      const before = await knobs();
      const current = before['merge_across_nodes'] === '1';
      // run=0 is written first (stopping goes first), then merge_across_nodes is refused: run=1 must be put back.
      expect(before['run']).toBe('1');
      const error = await configureKsm({ run: 0, mergeAcrossNodes: !current, pagesToScan: 123 }).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: 'ERR_VMPOD_SYSTEM', errnoName: 'EBUSY' });
      expect((error as Error).message).toContain('merge_across_nodes');
      expect(await knobs()).toEqual(before);
    } finally {
      helper?.stdin?.end();
      if (helper && helper.exitCode === null) helper.kill('SIGKILL');
      // Back as they were: ksmd's pace first, run last (the order configureKsm uses to start it).
      for (const f of KNOBS) {
        if (f === 'run' || saved[f] === undefined) continue;
        const now = (await fs.readFile(`${KSM}/${f}`, 'utf8')).trim();
        if (now !== saved[f]) await fs.writeFile(`${KSM}/${f}`, saved[f]!);
      }
      if (saved['run'] !== undefined) await fs.writeFile(`${KSM}/run`, saved['run']);
    }
    expect(await knobs()).toEqual(saved);
  });
});
