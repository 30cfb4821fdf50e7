/**
 * What KSM shares across sandboxes: host-wide counters and, per sandbox, the merged pages of its
 * VM's memory.
 *
 * @module
 */
import { readKsm, ksmProcessStats, type KsmStatus } from '../devices/ksm.js';
import * as validate from '../validate.js';

/** KSM sharing, host-wide and per sandbox. */
export interface KsmReport {
  host: KsmStatus;
  sandboxes: {
    id: string;
    pid: number;
    /** Guest RAM pages of this sandbox that KSM merged (`ksm_merging_pages`). */
    mergingPages: number;
    /** Bytes this sandbox saves, net of KSM metadata (`ksm_process_profit`), when the kernel says. */
    profitBytes: number | null;
    /** Whether KSM scans its RAM at all. */
    mergeable: boolean | null;
  }[];
}

/**
 * What KSM shares: host-wide counters (`/sys/kernel/mm/ksm`) and, per running sandbox, the
 * pages of its QEMU that are merged (`/proc/PID/ksm_stat`). Sandboxes need `ksm: true`.
 */
export async function ksmReport(sandboxes: readonly { readonly id: string; readonly pid: number | undefined }[], options: { sysfs?: string } = {}): Promise<KsmReport> {
  const host = await readKsm(options.sysfs === undefined ? {} : { sysfs: options.sysfs });
  const rows: KsmReport['sandboxes'] = [];
  for (const s of sandboxes) {
    if (s.pid === undefined) continue;
    const stats = await ksmProcessStats(validate.integer(s.pid, 'pid', 1, 2 ** 22));
    rows.push({ id: s.id, pid: s.pid, mergingPages: stats.mergingPages, profitBytes: stats.profit, mergeable: stats.mergeable });
  }
  return { host, sandboxes: rows };
}
