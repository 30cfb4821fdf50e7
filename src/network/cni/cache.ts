/**
 * The on-disk cache of ADD results, so that CHECK and DEL work from another process and after
 * a restart. One file per attachment, `CACHEDIR/results/NETWORK-CONTAINERID-IFNAME`, in
 * libcni's `cniCacheV1` format: pointing `cacheDir` at `/var/lib/cni` shares the cache with
 * libcni-based tools. Files are written atomically (temp file, fsync, rename, fsync dir).
 *
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../../state/atomic.js';
import { CniConfig, type JsonObject } from './config.js';
import { CniCacheError } from './errors.js';
import { parseResult, type CniResult } from './result.js';

const KIND = 'cniCacheV1';
const MAX_RECORD_BYTES = 4 << 20;

/** One cached attachment: the parameters and configuration of its ADD, and its result. */
export interface CniCachedAttachment {
  readonly network: string;
  readonly containerId: string;
  readonly ifName: string;
  readonly netns: string | undefined;
  readonly args: readonly (readonly [string, string])[];
  readonly capabilityArgs: JsonObject;
  /** The configuration ADD ran with (so DEL can run without the original file). */
  readonly config: CniConfig;
  /** The final result exactly as the last plugin printed it (what `prevResult` carries). */
  readonly rawResult: JsonObject | undefined;
  /** The same result in the typed 1.x model. */
  readonly result: CniResult | undefined;
  /** The cache file. */
  readonly file: string;
}

/** What is stored for a new attachment. */
export type CacheEntry = Omit<CniCachedAttachment, 'file' | 'result'>;

function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Reads and writes cached results under `dir/results`. */
export class ResultCache {
  /** The directory holding the result files. */
  readonly resultsDir: string;

  constructor(readonly dir: string) {
    this.resultsDir = path.join(dir, 'results');
  }

  /** The file of an attachment (libcni's naming). */
  file(network: string, containerId: string, ifName: string): string {
    return path.join(this.resultsDir, `${network}-${containerId}-${ifName}`);
  }

  /**
   * The cached attachment, or undefined when there is none. A file whose record names another
   * attachment (libcni's names can collide: `a-b` + `c` vs `a` + `b-c`) counts as none.
   *
   * @throws {@link CniCacheError} when the file is unreadable or corrupt.
   */
  async read(network: string, containerId: string, ifName: string): Promise<CniCachedAttachment | undefined> {
    const file = this.file(network, containerId, ifName);
    const record = await this.#load(file);
    if (record === undefined) return undefined;
    return record.network === network && record.containerId === containerId && record.ifName === ifName ? record : undefined;
  }

  /** Every readable cached attachment, optionally only those of one container. Corrupt files are skipped. */
  async list(containerId?: string): Promise<CniCachedAttachment[]> {
    let names: string[];
    try {
      names = await fs.readdir(this.resultsDir);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw error;
    }
    const out: CniCachedAttachment[] = [];
    for (const name of names.sort()) {
      if (name.startsWith('.')) continue; // temp files of writes in progress
      if (containerId !== undefined && !name.includes(`-${containerId}-`)) continue;
      const record = await this.#load(path.join(this.resultsDir, name)).catch(() => undefined);
      if (record !== undefined && (containerId === undefined || record.containerId === containerId)) out.push(record);
    }
    return out;
  }

  /** Stores an attachment atomically, replacing any previous record of it. */
  async write(entry: CacheEntry): Promise<string> {
    const record: JsonObject = {
      kind: KIND,
      containerId: entry.containerId,
      // libcni stores the configuration's bytes (Go marshals []byte as base64).
      config: Buffer.from(JSON.stringify(entry.config)).toString('base64'),
      ifName: entry.ifName,
      networkName: entry.network,
    };
    if (entry.netns !== undefined) record['netns'] = entry.netns;
    if (entry.args.length > 0) record['cniArgs'] = entry.args;
    if (Object.keys(entry.capabilityArgs).length > 0) record['capabilityArgs'] = entry.capabilityArgs;
    if (entry.rawResult !== undefined) record['result'] = entry.rawResult;

    const file = this.file(entry.network, entry.containerId, entry.ifName);
    await fs.mkdir(this.resultsDir, { recursive: true, mode: 0o700 });
    await writeFileAtomic(file, JSON.stringify(record));
    return file;
  }

  /** Deletes an attachment's record, if it is that attachment's. Returns whether one was deleted. */
  async remove(network: string, containerId: string, ifName: string): Promise<boolean> {
    const file = this.file(network, containerId, ifName);
    let record: CniCachedAttachment | undefined;
    try {
      record = await this.#load(file);
    } catch {
      record = undefined; // corrupt: it is ours by name, drop it
      await fs.rm(file, { force: true });
      return true;
    }
    if (record === undefined || record.network !== network || record.containerId !== containerId || record.ifName !== ifName) {
      return false;
    }
    await fs.rm(file, { force: true });
    return true;
  }

  async #load(file: string): Promise<CniCachedAttachment | undefined> {
    let text: string;
    try {
      const handle = await fs.open(file, 'r');
      try {
        const { size } = await handle.stat();
        if (size > MAX_RECORD_BYTES) throw new CniCacheError(file, `is ${size} bytes, more than a result can be`);
        text = await handle.readFile('utf8');
      } finally {
        await handle.close();
      }
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      if (error instanceof CniCacheError) throw error;
      throw new CniCacheError(file, 'cannot be read', { cause: error });
    }
    let rec: unknown;
    try {
      rec = JSON.parse(text);
    } catch (cause) {
      throw new CniCacheError(file, 'is not valid JSON', { cause });
    }
    if (!isObject(rec) || rec['kind'] !== KIND) throw new CniCacheError(file, `is not a "${KIND}" record`);
    const { containerId, ifName, networkName, netns } = rec;
    if (typeof containerId !== 'string' || typeof ifName !== 'string' || typeof networkName !== 'string') {
      throw new CniCacheError(file, 'lacks containerId, ifName or networkName');
    }
    if (netns !== undefined && typeof netns !== 'string') throw new CniCacheError(file, 'has a non-string netns');
    const rawArgs = rec['cniArgs'] ?? [];
    if (!Array.isArray(rawArgs) || rawArgs.some((p) => !Array.isArray(p) || p.length !== 2 || p.some((s) => typeof s !== 'string'))) {
      throw new CniCacheError(file, 'has malformed cniArgs');
    }
    const capabilityArgs = rec['capabilityArgs'] ?? {};
    if (!isObject(capabilityArgs)) throw new CniCacheError(file, 'has malformed capabilityArgs');
    let config: CniConfig;
    try {
      if (typeof rec['config'] !== 'string') throw new Error('config is missing');
      config = CniConfig.fromObject(JSON.parse(Buffer.from(rec['config'], 'base64').toString('utf8')) as unknown);
    } catch (cause) {
      throw new CniCacheError(file, 'holds no valid network configuration', { cause });
    }
    let rawResult: JsonObject | undefined;
    let result: CniResult | undefined;
    if (rec['result'] !== undefined) {
      try {
        ({ raw: rawResult, result } = parseResult(rec['result'], config.cniVersion));
      } catch (cause) {
        throw new CniCacheError(file, 'holds an invalid result', { cause });
      }
    }
    return {
      network: networkName,
      containerId,
      ifName,
      netns,
      args: rawArgs as [string, string][],
      capabilityArgs,
      config,
      rawResult,
      result,
      file,
    };
  }
}
