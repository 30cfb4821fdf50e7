/**
 * Kernel samepage merging (KSM): read and tune `/sys/kernel/mm/ksm`, put the previous settings
 * back, and report what it shares and saves, host-wide and per process (a sandbox's QEMU).
 *
 * KSM only scans memory marked mergeable: for a VM, QEMU's `-machine mem-merge=on` (the default
 * of QEMU, `madvise(MADV_MERGEABLE)` on guest RAM). Merging identical pages across VMs opens
 * timing side channels (page-fusion attacks, copy-on-write delays reveal another tenant's
 * memory contents), so vmpod leaves KSM off unless asked: see docs/ksm.md.
 *
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { InvalidArgumentError } from '../errors.js';
import { integer } from '../validate.js';
import { FeatureUnavailableError, SysfsReadbackError } from './errors.js';
import { sysfsOf, type Sysfs, type SysfsOptions } from './sysfs.js';

const DIR = 'kernel/mm/ksm';

/** KSM tunables (each undefined when the kernel lacks it). */
export interface KsmSettings {
  /** 0 stop, 1 run, 2 stop and unmerge every merged page (`run`). */
  run?: 0 | 1 | 2 | undefined;
  /** Pages scanned per wake-up (`pages_to_scan`). */
  pagesToScan?: number | undefined;
  /** Sleep between scans (`sleep_millisecs`). */
  sleepMillisecs?: number | undefined;
  /** Merge pages of different NUMA nodes (`merge_across_nodes`; only changeable while nothing is shared). */
  mergeAcrossNodes?: boolean | undefined;
  /** Most sharers of one KSM page (`max_page_sharing`). */
  maxPageSharing?: number | undefined;
  /** Merge empty pages with the kernel's zero page (`use_zero_pages`). */
  useZeroPages?: boolean | undefined;
  /** `stable_node_chains_prune_millisecs`. */
  stableNodeChainsPruneMillisecs?: number | undefined;
  /** Skip pages that did not merge recently (`smart_scan`, Linux 6.7+). */
  smartScan?: boolean | undefined;
}

type Key = keyof KsmSettings;

/** A tunable: its file, and whether it holds a boolean or an integer with its kernel bounds. */
interface Tunable {
  key: Key;
  file: string;
  bool?: true;
  min?: number;
  max?: number;
}

const RUN: Tunable = { key: 'run', file: 'run', min: 0, max: 2 };

/** Tunables in the order they are applied when KSM is started (`run` last). */
const TUNABLES: readonly Tunable[] = [
  { key: 'mergeAcrossNodes', file: 'merge_across_nodes', bool: true },
  { key: 'maxPageSharing', file: 'max_page_sharing', min: 2 },
  { key: 'useZeroPages', file: 'use_zero_pages', bool: true },
  { key: 'pagesToScan', file: 'pages_to_scan' },
  { key: 'sleepMillisecs', file: 'sleep_millisecs' },
  { key: 'stableNodeChainsPruneMillisecs', file: 'stable_node_chains_prune_millisecs' },
  { key: 'smartScan', file: 'smart_scan', bool: true },
  RUN,
];

/** Host-wide KSM counters. */
export interface KsmStats {
  /** Distinct KSM pages in use (`pages_shared`). */
  pagesShared: number;
  /** Extra mappings of those pages: the pages saved (`pages_sharing`). */
  pagesSharing: number;
  /** Pages scanned that are unique (`pages_unshared`). */
  pagesUnshared: number;
  /** Pages changing too fast to merge (`pages_volatile`). */
  pagesVolatile: number;
  /** Completed passes over all mergeable memory (`full_scans`). */
  fullScans: number;
  /** Empty pages merged into the zero page (`ksm_zero_pages`); null when the kernel lacks it. */
  ksmZeroPages: number | null;
  /** Bytes saved minus KSM's own metadata (`general_profit`); null when the kernel lacks it. */
  generalProfit: number | null;
}

/** Settings and counters of KSM. */
export interface KsmStatus {
  settings: KsmSettings;
  stats: KsmStats;
  /** Base page size of the host. */
  pageSize: number;
  /** Memory saved: (`pages_sharing` + `ksm_zero_pages`) x page size. */
  savedBytes: number;
}

/** Options of the KSM functions. */
export interface KsmOptions extends SysfsOptions {
  /** Base page size (default: the host's, from the ELF auxiliary vector). */
  pageSize?: number | undefined;
}

/** Whether the kernel has KSM (`/sys/kernel/mm/ksm`). */
export async function ksmAvailable(options: SysfsOptions = {}): Promise<boolean> {
  return sysfsOf(options).exists(`${DIR}/run`);
}

async function requireKsm(sysfs: Sysfs): Promise<void> {
  if (!(await sysfs.exists(`${DIR}/run`))) {
    throw new FeatureUnavailableError('KSM', `this kernel has no KSM (${sysfs.path(DIR)} is missing: CONFIG_KSM)`);
  }
}

async function readSettings(sysfs: Sysfs): Promise<KsmSettings> {
  const settings: KsmSettings = {};
  for (const t of TUNABLES) {
    const value = await sysfs.readInt(`${DIR}/${t.file}`);
    if (value === undefined) continue;
    (settings as Record<Key, unknown>)[t.key] = t.bool ? value !== 0 : value;
  }
  return settings;
}

/**
 * Reads KSM's settings and counters.
 *
 * Equivalent: `grep . /sys/kernel/mm/ksm/*`.
 */
export async function readKsm(options: KsmOptions = {}): Promise<KsmStatus> {
  const sysfs = sysfsOf(options);
  await requireKsm(sysfs);
  const count = async (file: string): Promise<number> => (await sysfs.readInt(`${DIR}/${file}`)) ?? 0;
  const stats: KsmStats = {
    pagesShared: await count('pages_shared'),
    pagesSharing: await count('pages_sharing'),
    pagesUnshared: await count('pages_unshared'),
    pagesVolatile: await count('pages_volatile'),
    fullScans: await count('full_scans'),
    ksmZeroPages: (await sysfs.readInt(`${DIR}/ksm_zero_pages`)) ?? null,
    generalProfit: (await sysfs.readInt(`${DIR}/general_profit`)) ?? null,
  };
  const pageSize = options.pageSize ?? (await systemPageSize());
  return {
    settings: await readSettings(sysfs),
    stats,
    pageSize,
    savedBytes: (stats.pagesSharing + (stats.ksmZeroPages ?? 0)) * pageSize,
  };
}

/** KSM settings changed by {@link configureKsm}; {@link restore} writes the previous values back. */
export class KsmConfiguration {
  private restored = false;

  constructor(
    /** The values before, of the settings that were changed (persistable). */
    readonly previous: KsmSettings,
    /** The values written. */
    readonly applied: KsmSettings,
    private readonly sysfs: Sysfs,
  ) {}

  /** Writes the previous values back; idempotent. */
  async restore(): Promise<void> {
    if (this.restored) return;
    await restoreKsm(this.previous, { sysfs: this.sysfs });
    this.restored = true;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.restore();
  }
}

/** The text written for a setting; validates it. */
function encode(t: Tunable, value: unknown): string {
  if (t.bool) {
    if (typeof value !== 'boolean') throw new InvalidArgumentError(t.key, `${JSON.stringify(value)} is not a boolean`);
    return value ? '1' : '0';
  }
  return String(integer(value, t.key, t.min ?? 0, t.max ?? 2 ** 32 - 1));
}

/** Writes the given settings in a safe order, reading each back; undoes what was written if one fails. */
async function apply(sysfs: Sysfs, settings: KsmSettings, current: KsmSettings): Promise<void> {
  // Stopping KSM goes first (merge_across_nodes can only change once nothing is merged); starting it goes last.
  const stopping = settings.run !== undefined && settings.run !== 1;
  const order = stopping ? [RUN, ...TUNABLES.filter((t) => t !== RUN)] : TUNABLES;
  const done: Tunable[] = [];
  try {
    for (const t of order) {
      const value = settings[t.key];
      if (value === undefined) continue;
      const text = encode(t, value);
      if (current[t.key] === undefined) {
        throw new FeatureUnavailableError(`KSM ${t.file}`, `this kernel's KSM has no ${t.file} setting`);
      }
      await sysfs.write(`${DIR}/${t.file}`, text);
      done.push(t);
      const back = await sysfs.readOptional(`${DIR}/${t.file}`);
      if (back !== text) throw new SysfsReadbackError(sysfs.path(`${DIR}/${t.file}`), text, back ?? '');
    }
  } catch (error) {
    for (const t of done.reverse()) {
      await sysfs.write(`${DIR}/${t.file}`, encode(t, current[t.key])).catch(() => undefined);
    }
    throw error;
  }
}

/**
 * Changes KSM settings (only those given), reading each back. Returns the previous values for
 * {@link KsmConfiguration.restore}. On a failure, what was already written is put back.
 *
 * Equivalent: `echo 1000 > /sys/kernel/mm/ksm/pages_to_scan; echo 1 > /sys/kernel/mm/ksm/run`.
 */
export async function configureKsm(settings: KsmSettings, options: SysfsOptions = {}): Promise<KsmConfiguration> {
  const sysfs = sysfsOf(options);
  await requireKsm(sysfs);
  const current = await readSettings(sysfs);
  for (const t of TUNABLES) if (settings[t.key] !== undefined) encode(t, settings[t.key]); // validate all first
  await apply(sysfs, settings, current);
  const previous: KsmSettings = {};
  const applied: KsmSettings = {};
  for (const { key } of TUNABLES) {
    if (settings[key] === undefined) continue;
    (previous as Record<Key, unknown>)[key] = current[key];
    (applied as Record<Key, unknown>)[key] = settings[key];
  }
  return new KsmConfiguration(previous, applied, sysfs);
}

/** Writes back settings returned as `previous` by {@link configureKsm}. */
export async function restoreKsm(previous: KsmSettings, options: SysfsOptions = {}): Promise<void> {
  const sysfs = sysfsOf(options);
  await requireKsm(sysfs);
  await apply(sysfs, previous, await readSettings(sysfs));
}

/** KSM counters of one process (Linux 6.1+: `/proc/PID/ksm_stat`). */
export interface KsmProcessStats {
  /** Pages of this process merged by KSM (`ksm_merging_pages`). */
  mergingPages: number;
  /** Empty pages merged into the zero page (`ksm_zero_pages`), 0 when the kernel lacks it. */
  zeroPages: number;
  /** Bytes saved minus metadata (`ksm_process_profit`); null when the kernel lacks it. */
  profit: number | null;
  /** Whether the process is scanned at all (`ksm_mergeable`); null when the kernel lacks it. */
  mergeable: boolean | null;
}

/**
 * KSM counters of a process, e.g. a sandbox's QEMU: how many of its pages are shared.
 *
 * Equivalent: `cat /proc/PID/ksm_stat`.
 */
export async function ksmProcessStats(pid: number, options: { proc?: string | undefined } = {}): Promise<KsmProcessStats> {
  const file = path.join(options.proc ?? '/proc', String(integer(pid, 'pid', 1, 2 ** 22)), 'ksm_stat');
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (cause) {
    throw new FeatureUnavailableError('KSM process statistics', `cannot read ${file} (no such process, or a kernel before 6.1)`, { cause });
  }
  const field = (name: string): string | undefined => new RegExp(`^${name}:? (\\S+)$`, 'mu').exec(text)?.[1];
  const num = (name: string): number | null => {
    const v = field(name);
    return v === undefined ? null : Number(v);
  };
  const mergeable = field('ksm_mergeable');
  return {
    mergingPages: num('ksm_merging_pages') ?? 0,
    zeroPages: num('ksm_zero_pages') ?? 0,
    profit: num('ksm_process_profit'),
    mergeable: mergeable === undefined ? null : mergeable === 'yes',
  };
}

let pageSizeCache: number | undefined;

/** The host's base page size: AT_PAGESZ from `/proc/self/auxv` (4096 when unreadable). */
export async function systemPageSize(): Promise<number> {
  if (pageSizeCache !== undefined) return pageSizeCache;
  let size = 4096;
  try {
    const auxv = await fs.readFile('/proc/self/auxv');
    for (let off = 0; off + 16 <= auxv.length; off += 16) {
      const type = auxv.readBigUInt64LE(off);
      if (type === 0n) break;
      if (type === 6n) size = Number(auxv.readBigUInt64LE(off + 8)); // AT_PAGESZ
    }
  } catch {
    // keep the default
  }
  pageSizeCache = size;
  return size;
}
