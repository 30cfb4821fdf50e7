/**
 * Hugepages on the host: the pools per page size and NUMA node, reservations that are always read
 * back (a write to `nr_hugepages` can succeed only in part with exit 0), and hugetlbfs mounts.
 *
 * A {@link HugepageReservation} grows a pool by `count` pages and puts it back on
 * {@link HugepageReservation.release}; a partial allocation is either rolled back and reported as
 * {@link InsufficientHugepagesError} (the default) or, with `allowPartial`, returned with
 * `partial: true`. Nothing is hidden.
 *
 * The pools are host-wide and shared by every sandbox, so a reservation and a release read and
 * write `nr_hugepages` under the host lock of the page size (`/run/lock/vmpod/hugepages-<kB>kB.lock`,
 * see `host-lock.ts`): a reservation records the pages it added as read under that lock, and a
 * release removes exactly those from the pool as it is then.
 *
 * Next to the lock, the ledger of the page size (`hugepages-<kB>kB.json`) holds a claim per
 * reservation that has not been released (see {@link HugepageClaim}): written before
 * `nr_hugepages` is, settled after the read-back, removed by the release. It makes a release
 * happen once however often it is asked for ({@link releaseHugepages}), and lets a caller that
 * crashed mid-call give back exactly what the call added ({@link releaseHugepageClaim}).
 *
 * Sysfs: `kernel/mm/hugepages/hugepages-<kB>kB/` (global pools) and
 * `devices/system/node/node<N>/hugepages/hugepages-<kB>kB/` (per node), under an injectable root.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { InvalidArgumentError, NotFoundError } from '../errors.js';
import { absolutePath, integer } from '../validate.js';
import {
  HugepageClaimExistsError,
  HugepageLedgerError,
  InsufficientHugepagesError,
  SysfsReadbackError,
  UnsupportedHugepageSizeError,
} from './errors.js';
import {
  acquireHostLock,
  claimId as checkClaimId,
  claimOwner,
  currentProcess,
  hostLockDir,
  keptLockOptions,
  processAlive,
  writeHostFile,
  type HostLockOptions,
} from './host-lock.js';
import { mount, unmount } from './mount.js';
import { sysfsOf, type Sysfs, type SysfsOptions } from './sysfs.js';

const KiB = 1024;
const UNIT: Record<string, number> = { '': 1, k: KiB, m: KiB ** 2, g: KiB ** 3 };

/**
 * A hugepage size in bytes from a number of bytes or a string such as `2M`, `2MB`, `2MiB`,
 * `2048kB` or `1G` (binary units, as the kernel's `hugepagesz=`).
 */
export function hugepageSize(value: unknown, field = 'size'): number {
  let bytes = NaN;
  if (typeof value === 'number') bytes = value;
  else if (typeof value === 'string') {
    const m = /^(\d{1,7})\s*([kKmMgG]?)(?:i?[bB])?$/u.exec(value.trim());
    if (m) bytes = Number(m[1]) * (UNIT[(m[2] ?? '').toLowerCase()] ?? NaN);
  }
  if (!Number.isSafeInteger(bytes) || bytes < 4 * KiB || (bytes & (bytes - 1)) !== 0) {
    throw new InvalidArgumentError(field, `${JSON.stringify(value)} is not a hugepage size (a power of two such as "2M" or "1G")`);
  }
  return bytes;
}

/** Counts of one page size on one NUMA node. */
export interface HugepageNodeCounts {
  node: number;
  /** Persistent pool size (`nr_hugepages`). */
  total: number;
  free: number;
  surplus: number;
}

/** A hugepage pool of one page size: `grep Huge /proc/meminfo`, per size and node. */
export interface HugepagePool {
  sizeBytes: number;
  /** Persistent pool size (`nr_hugepages`). */
  total: number;
  free: number;
  surplus: number;
  /** Pages promised to mappings but not yet faulted in (`resv_hugepages`). */
  reserved: number;
  /** Surplus pages allowed on demand (`nr_overcommit_hugepages`). */
  overcommit: number;
  /** Per NUMA node; empty when the kernel has no NUMA sysfs. */
  nodes: HugepageNodeCounts[];
}

const globalDir = (sizeBytes: number): string => `kernel/mm/hugepages/hugepages-${sizeBytes / KiB}kB`;
const nodeDir = (node: number, sizeBytes: number): string =>
  `devices/system/node/node${node}/hugepages/hugepages-${sizeBytes / KiB}kB`;

async function numaNodes(sysfs: Sysfs): Promise<number[]> {
  return (await sysfs.list('devices/system/node'))
    .map((name) => /^node(\d+)$/u.exec(name)?.[1])
    .filter((n): n is string => n !== undefined)
    .map(Number)
    .sort((a, b) => a - b);
}

async function readCount(sysfs: Sysfs, rel: string): Promise<number> {
  const value = await sysfs.readInt(rel);
  if (value === undefined) throw new NotFoundError('sysfs attribute', sysfs.path(rel));
  return value;
}

/**
 * The hugepage pools of the host, smallest page size first.
 *
 * Equivalent: `grep -r . /sys/kernel/mm/hugepages /sys/devices/system/node/node*\/hugepages`.
 */
export async function listHugepages(options: SysfsOptions = {}): Promise<HugepagePool[]> {
  const sysfs = sysfsOf(options);
  const sizes = (await sysfs.list('kernel/mm/hugepages'))
    .map((name) => /^hugepages-(\d+)kB$/u.exec(name)?.[1])
    .filter((kb): kb is string => kb !== undefined)
    .map((kb) => Number(kb) * KiB)
    .sort((a, b) => a - b);
  const nodes = await numaNodes(sysfs);
  return Promise.all(
    sizes.map(async (sizeBytes): Promise<HugepagePool> => {
      const dir = globalDir(sizeBytes);
      const perNode = await Promise.all(
        nodes.map(async (node) => {
          const d = nodeDir(node, sizeBytes);
          if (!(await sysfs.exists(d))) return undefined;
          return {
            node,
            total: await readCount(sysfs, `${d}/nr_hugepages`),
            free: await readCount(sysfs, `${d}/free_hugepages`),
            surplus: await readCount(sysfs, `${d}/surplus_hugepages`),
          };
        }),
      );
      return {
        sizeBytes,
        total: await readCount(sysfs, `${dir}/nr_hugepages`),
        free: await readCount(sysfs, `${dir}/free_hugepages`),
        surplus: await readCount(sysfs, `${dir}/surplus_hugepages`),
        reserved: (await sysfs.readInt(`${dir}/resv_hugepages`)) ?? 0,
        overcommit: (await sysfs.readInt(`${dir}/nr_overcommit_hugepages`)) ?? 0,
        nodes: perNode.filter((n): n is HugepageNodeCounts => n !== undefined),
      };
    }),
  );
}

/** The pool of one page size; {@link UnsupportedHugepageSizeError} when the host has none of that size. */
export async function hugepagePool(size: number | string, options: SysfsOptions = {}): Promise<HugepagePool> {
  const sizeBytes = hugepageSize(size);
  const pools = await listHugepages(options);
  const pool = pools.find((p) => p.sizeBytes === sizeBytes);
  if (!pool) throw new UnsupportedHugepageSizeError(sizeBytes, pools.map((p) => p.sizeBytes));
  return pool;
}

/**
 * Memory of a NUMA node (or of the host), in bytes: its memory blocks (`nodeN/memoryM` x
 * `memory/block_size_bytes`), else `MemTotal` of `nodeN/meminfo`, else the host's. The blocks come
 * first because `meminfo` can undercount: with deferred struct-page init a node was seen reporting
 * 5 GiB of a 24 GiB host whose kernel then gave 22 GiB of hugepages.
 */
async function memTotal(sysfs: Sysfs, node: number | undefined): Promise<number> {
  const nodes = node === undefined ? await numaNodes(sysfs) : [node];
  if (nodes.length === 0) return os.totalmem(); // no NUMA sysfs: the host's memory is the bound
  const blockText = await sysfs.readOptional('devices/system/memory/block_size_bytes');
  const blockSize = blockText === undefined ? NaN : parseInt(blockText, 16);
  let total = 0;
  for (const n of nodes) {
    const blocks = (await sysfs.list(`devices/system/node/node${n}`)).filter((e) => /^memory\d+$/u.test(e)).length;
    if (blocks > 0 && Number.isSafeInteger(blockSize) && blockSize > 0) {
      total += blocks * blockSize;
      continue;
    }
    const text = await sysfs.readOptional(`devices/system/node/node${n}/meminfo`);
    const kb = text === undefined ? undefined : /MemTotal:\s+(\d+) kB/u.exec(text)?.[1];
    if (kb === undefined) return os.totalmem();
    total += Number(kb) * KiB;
  }
  return total;
}

/** What to reserve. */
export interface HugepageRequest {
  /** Page size: bytes or `2M`, `1G`, ... */
  size: number | string;
  /** Pages to add to the pool. */
  count: number;
  /** NUMA node; omitted: the global pool (the kernel spreads the pages over the nodes). */
  node?: number | undefined;
  /**
   * Keep a partial allocation and return it with `partial: true` instead of rolling it back and
   * throwing {@link InsufficientHugepagesError}.
   */
  allowPartial?: boolean | undefined;
}

/**
 * The persistable part of a {@link HugepageReservation}: enough to release it after a restart.
 * `obtained - previous` is the number of pages the reservation added, both read under the host
 * lock; `claimId` names its claim in the ledger, which is what {@link releaseHugepages} goes by.
 */
export interface HugepageReservationRecord {
  sizeBytes: number;
  /** NUMA node, or null for the global pool. */
  node: number | null;
  /** Pool size before the reservation (read under the host lock). */
  previous: number;
  /** Pool size read back after it: `previous` + the pages the kernel actually gave (at most `count`). */
  obtained: number;
  /**
   * The reservation's claim in the ledger (see {@link reserveHugepages}). Absent in records of
   * vmpod versions before the ledger: those are released by their numbers alone.
   */
  claimId?: string;
}

/** What {@link releaseHugepages} did. */
export interface HugepageRelease {
  /** Pool size read under the host lock before the release. */
  before: number;
  /** Pages taken off the pool: what the claim held (or the record's `obtained - previous`), at most `before`. */
  removed: number;
  /** Pool size read back after the write (`before - removed`). */
  after: number;
  /**
   * Surplus pages of the pool afterwards (`surplus_hugepages` of the same pool). The kernel does
   * not refuse to shrink a pool below the pages in use: it makes them surplus and frees them when
   * they are unmapped. A non-zero count means pages were still mapped (or held by hugetlbfs files)
   * when the pool shrank; until they go, the pool has that many fewer free pages for the others.
   */
  surplus: number;
  /**
   * True when the record's claim was no longer in the ledger: it was released before (or never
   * held a page), so nothing was written and `removed` is 0. Always false for records without
   * `claimId`.
   */
  alreadyReleased: boolean;
}

/** Options of {@link reserveHugepages} and {@link releaseHugepages}: the sysfs tree and the host lock. */
export interface HugepageOptions extends SysfsOptions, HostLockOptions {}

/** Options of {@link reserveHugepages}. */
export interface HugepageReserveOptions extends HugepageOptions {
  /**
   * Who reserves, e.g. a sandbox id: kept in the reservation's claim (see {@link hugepageClaims}).
   * Default `pid <this pid>`. Up to 128 printable ASCII characters.
   */
  owner?: string | undefined;
  /**
   * The id of the reservation's claim in the ledger (default: a random UUID). Give your own and
   * save it before calling: after a crash at any point of the call, {@link releaseHugepageClaim}
   * with that id gives back exactly the pages the claim holds (none if the call never got to write,
   * or rolled back). An id the ledger holds already is refused ({@link HugepageClaimExistsError}).
   * Up to 128 of `[A-Za-z0-9_.:-]`.
   */
  claimId?: string | undefined;
}

/** Options of {@link releaseHugepageClaim} and {@link hugepageClaims}. */
export interface HugepageClaimOptions extends HugepageOptions {
  /** The page size whose ledger to look in; omitted: every ledger in the lock folder. */
  size?: number | string | undefined;
}

/** Pages added to a hugepage pool; {@link release} puts the pool back. */
export class HugepageReservation implements HugepageReservationRecord {
  readonly sizeBytes: number;
  readonly node: number | null;
  readonly previous: number;
  readonly obtained: number;
  /** The reservation's claim in the ledger (absent only for a record of an earlier version). */
  readonly claimId?: string;
  /** Pool size asked for (`previous + count`). */
  readonly requested: number;
  private released = false;

  private readonly lockOptions: HostLockOptions;

  constructor(
    record: HugepageReservationRecord,
    requested: number,
    private readonly sysfs: Sysfs,
    /** The host lock to release under (`lockDir`, `lockTimeoutMs`); default: the sysfs tree's. */
    lockOptions: HostLockOptions = {},
  ) {
    this.lockOptions = keptLockOptions(lockOptions);
    this.sizeBytes = record.sizeBytes;
    this.node = record.node;
    this.previous = record.previous;
    this.obtained = record.obtained;
    if (record.claimId !== undefined) this.claimId = record.claimId;
    this.requested = requested;
  }

  /** Pages this reservation added. */
  get added(): number {
    return this.obtained - this.previous;
  }

  /** Whether the kernel gave fewer pages than asked (only with `allowPartial`). */
  get partial(): boolean {
    return this.obtained < this.requested;
  }

  /**
   * Takes this reservation's pages off the pool again (see {@link releaseHugepages}) and says
   * what happened; idempotent (undefined once released by this object; a release of the same
   * claim from elsewhere makes it `alreadyReleased`).
   */
  async release(): Promise<HugepageRelease | undefined> {
    if (this.released) return undefined;
    const result = await releaseHugepages(this.toJSON(), { ...this.lockOptions, sysfs: this.sysfs });
    this.released = true;
    return result;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.release();
  }

  toJSON(): HugepageReservationRecord {
    return {
      sizeBytes: this.sizeBytes,
      node: this.node,
      previous: this.previous,
      obtained: this.obtained,
      ...(this.claimId === undefined ? {} : { claimId: this.claimId }),
    };
  }
}

/**
 * Adds `count` pages of `size` to the global pool or to one NUMA node's, then reads the pool size
 * back. A request beyond the memory of the node (or host) is refused before any write; a partial
 * allocation is rolled back and reported as {@link InsufficientHugepagesError} unless
 * `allowPartial` is set. Either way the pool ends as it was.
 *
 * The read, the write, the read-back and any roll-back happen under the host lock of the page
 * size, so concurrent reservations and releases (other sandboxes, other processes, other state
 * directories) each see the pool as the last one left it, and the record says exactly the pages
 * this call added.
 *
 * Every reservation is a claim in the ledger of the page size (`hugepages-<kB>kB.json` next to
 * the lock, see {@link hugepageClaims}), written under the lock: first as `writing` (the pool
 * size before and the pages about to be added) before `nr_hugepages` is written, then, after the
 * read-back, as `held` with the pages the kernel gave (or removed, when the call rolled back or
 * got nothing). A process that dies in between leaves the claim `writing`; the next process to
 * take the lock settles it before anything else (no one can have changed the pool while the dead
 * one held the lock, so the pool then is `previous` + what it added). The record carries the
 * claim's id, which is what makes {@link releaseHugepages} exact and idempotent; give your own
 * (`claimId`) to be able to release the claim after a crash of the caller before this returns.
 *
 * Equivalent: `flock /run/lock/vmpod/hugepages-2048kB.lock sh -c 'echo $(($(cat F) + count)) > F; cat F'`
 * with `F=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages` (or
 * `/sys/devices/system/node/nodeN/hugepages/...`), the claim written to
 * `/run/lock/vmpod/hugepages-2048kB.json` before the write and settled after the `cat`.
 */
export async function reserveHugepages(request: HugepageRequest, options: HugepageReserveOptions = {}): Promise<HugepageReservation> {
  const sizeBytes = hugepageSize(request.size, 'size');
  const count = integer(request.count, 'count', 1, 2 ** 31 - 1);
  const node = request.node === undefined ? undefined : integer(request.node, 'node', 0, 1023);
  const owner = options.owner === undefined ? `pid ${process.pid}` : claimOwner(options.owner, 'owner');
  const id = options.claimId === undefined ? randomUUID() : checkClaimId(options.claimId, 'claimId');
  const sysfs = sysfsOf(options);
  // What does not exist is refused before taking the lock, and checked again under it.
  const pools = await listHugepages({ sysfs });
  const known = pools.find((p) => p.sizeBytes === sizeBytes);
  if (!known) throw new UnsupportedHugepageSizeError(sizeBytes, pools.map((p) => p.sizeBytes));
  if (node !== undefined && !known.nodes.some((n) => n.node === node)) {
    throw new NotFoundError('NUMA node', String(node));
  }
  const me = await currentProcess();
  return withLedger(sizeBytes, options, sysfs, async (dir, claims) => {
    const taken = claims.find((c) => c.claimId === id);
    if (taken !== undefined) throw new HugepageClaimExistsError(id, taken, ledgerPath(dir, sizeBytes));
    const now = await listHugepages({ sysfs });
    const pool = now.find((p) => p.sizeBytes === sizeBytes);
    if (!pool) throw new UnsupportedHugepageSizeError(sizeBytes, now.map((p) => p.sizeBytes));
    const file = poolFile(sizeBytes, node ?? null);
    const previous = await readPersistent(sysfs, file);
    const requested = previous + count;

    // Asking for more than the memory there is can only fail, after squeezing every cache on the
    // host: refuse it up front. Pages of the other sizes already take their share.
    const others = now
      .filter((p) => p !== pool)
      .reduce((sum, p) => sum + p.sizeBytes * (node === undefined ? p.total : (p.nodes.find((n) => n.node === node)?.total ?? 0)), 0);
    if (requested * sizeBytes + others > (await memTotal(sysfs, node))) {
      throw new InsufficientHugepagesError(sizeBytes, node, previous, requested, previous, false, false);
    }

    // The claim first: whoever takes the lock next (after a crash too) can tell what this call added.
    const entry: HugepageClaim = {
      claimId: id,
      owner,
      pid: me.pid,
      pidStart: me.pidStart,
      since: new Date().toISOString(),
      sizeBytes,
      node: node ?? null,
      state: 'writing',
      count,
      previous,
      added: 0,
      writer: me,
    };
    await writeLedger(dir, sizeBytes, [...claims, entry]);

    /** Pages this call holds now; undefined when only a read of the pool can tell. */
    let holds: number | undefined;
    let failure: unknown;
    let shortfall: { obtained: number; rolledBack: boolean; cause: unknown } | undefined;
    try {
      try {
        await sysfs.write(file, String(requested));
      } catch (cause) {
        // The kernel refused the write; make sure it left nothing half-done.
        const back = await readPersistent(sysfs, file).catch(() => undefined);
        if (back !== undefined && back !== previous) await restoreCount(sysfs, file, previous).catch(() => undefined);
        throw cause;
      }
      // The kernel may give fewer pages than asked, never more; anything above `requested` would be
      // someone writing the file without the lock, and is not this reservation's.
      const obtained = Math.max(previous, Math.min(await readPersistent(sysfs, file), requested));
      holds = obtained - previous;
      if (obtained < requested && !request.allowPartial) {
        shortfall = { obtained, rolledBack: holds === 0, cause: undefined };
        if (holds > 0) {
          try {
            // Relative to the pool as it is: take off what this call added, nothing else.
            const back = await readPersistent(sysfs, file);
            await restoreCount(sysfs, file, Math.max(0, back - holds));
            shortfall.rolledBack = true;
            holds = 0;
          } catch (e) {
            shortfall.cause = e;
            holds = undefined;
          }
        }
      }
    } catch (error) {
      failure = error;
      holds = undefined;
    }

    // Settle the claim: what the pool says this call holds, under the lock held since the claim was
    // written. If the pool cannot be read, the claim stays `writing` for the next lock holder.
    if (holds === undefined) {
      const current = await readPersistent(sysfs, file).catch((error: unknown) => {
        throw failure ?? error;
      });
      holds = settledPages(entry, current);
    }
    const held: HugepageClaim | undefined = holds === 0 ? undefined : settledClaim(entry, holds);
    try {
      await writeLedger(dir, sizeBytes, held === undefined ? claims : [...claims, held]);
    } catch (cause) {
      // The ledger still says `writing` from `previous`: give the pages back, so that whoever
      // settles the claim finds nothing added (and nothing is held that no record names).
      let givenBack = holds === 0;
      if (!givenBack) {
        try {
          const back = await readPersistent(sysfs, file);
          await restoreCount(sysfs, file, Math.max(0, back - holds));
          givenBack = true;
        } catch {
          // Left to the next lock holder, which settles the claim from the pool as it is.
        }
      }
      throw new HugepageLedgerError(
        ledgerPath(dir, sizeBytes),
        `could not record claim ${id} (${(cause as Error).message}); ` +
          (givenBack
            ? `nothing is reserved, the pool is at ${previous} again`
            : `its ${holds} pages are still in the pool: the next reservation or release of this size settles the claim, then releaseHugepageClaim(${JSON.stringify(id)}) gives them back`),
        { cause },
      );
    }
    if (shortfall !== undefined) {
      const { obtained, rolledBack, cause } = shortfall;
      throw new InsufficientHugepagesError(sizeBytes, node, previous, requested, obtained, true, rolledBack, {
        ...(cause === undefined ? {} : { cause }),
        ...(held === undefined ? {} : { claimId: id }),
      });
    }
    if (failure !== undefined) throw failure;
    return new HugepageReservation({ sizeBytes, node: node ?? null, previous, obtained: previous + holds, claimId: id }, requested, sysfs, options);
  });
}

/** Name of the host lock of one page size's pools (global and per node). */
function hugepageLockName(sizeBytes: number): string {
  return `hugepages-${sizeBytes / KiB}kB`;
}

/** The `nr_hugepages` of a pool: global (node null) or one node's. */
function poolFile(sizeBytes: number, node: number | null): string {
  return `${node === null ? globalDir(sizeBytes) : nodeDir(node, sizeBytes)}/nr_hugepages`;
}

/**
 * The persistent size of a pool: `nr_hugepages` minus `surplus_hugepages`. Writing `nr_hugepages`
 * sets this; when pages are still mapped (a vhost-user backend has not let go of a dead VM's RAM
 * yet) the kernel keeps them as surplus, counted in `nr_hugepages`, and frees them once unmapped.
 */
async function readPersistent(sysfs: Sysfs, file: string): Promise<number> {
  const surplus = (await sysfs.readInt(file.replace(/nr_hugepages$/u, 'surplus_hugepages'))) ?? 0;
  return (await readCount(sysfs, file)) - surplus;
}

/** Writes `value` and checks that the pool's persistent size reads back as it. */
async function restoreCount(sysfs: Sysfs, file: string, value: number): Promise<void> {
  await sysfs.write(file, String(value));
  const back = await readPersistent(sysfs, file);
  if (back !== value) throw new SysfsReadbackError(sysfs.path(file), String(value), String(back));
}

/**
 * Takes a reservation's pages off its pool again, under the host lock of the page size: reads the
 * pool size now and writes it minus the pages the reservation added, never below 0, then reads
 * it back. The arithmetic is relative to the pool as it is, not a write of the old size, so pages
 * that other reservations added meanwhile stay. Pages still mapped become surplus pages and return
 * to the system when unmapped: see {@link HugepageRelease.surplus}.
 *
 * A record with a `claimId` is released by its claim in the ledger, and at most once: the claim
 * says the pages it holds (what the kernel gave, as read under the lock), is marked `releasing`
 * before the write and removed after the read-back. When the ledger no longer has the claim, the
 * reservation was released already (by this record, a copy of it, or {@link releaseHugepageClaim}),
 * and nothing is written: the result says `alreadyReleased`. So a caller that crashes between
 * this call and noting that it released can simply release again.
 *
 * Records written by earlier versions of vmpod have no `claimId` and are released by their
 * numbers (`obtained - previous`) as those versions did: each call removes those pages again, so
 * drop such a record once it returns. Two such records made in a race without the host lock may
 * both count the same pages, which cannot be told from them.
 *
 * A record read back from disk is input: it is checked before anything is read or written.
 *
 * Equivalent: `flock /run/lock/vmpod/hugepages-2048kB.lock sh -c 'echo $(($(cat F) - added)) > F; cat F'`,
 * with the claim in `/run/lock/vmpod/hugepages-2048kB.json` marked before and removed after.
 */
export async function releaseHugepages(record: HugepageReservationRecord, options: HugepageOptions = {}): Promise<HugepageRelease> {
  const sysfs = sysfsOf(options);
  // A record read back from disk is input too.
  const sizeBytes = hugepageSize(record?.sizeBytes, 'record.sizeBytes');
  if (record.node !== null) integer(record.node, 'record.node', 0, 1023);
  integer(record.previous, 'record.previous', 0, 2 ** 31 - 1);
  integer(record.obtained, 'record.obtained', record.previous, 2 ** 31 - 1);
  const id = record.claimId === undefined ? undefined : checkClaimId(record.claimId, 'record.claimId');
  const file = poolFile(sizeBytes, record.node);
  const me = await currentProcess();
  return withLedger(sizeBytes, options, sysfs, async (dir, claims) => {
    if (id === undefined) {
      // A record of an earlier version: no claim, released by its numbers as then.
      const before = await readPersistent(sysfs, file);
      const removed = Math.min(before, record.obtained - record.previous);
      const after = before - removed;
      if (after !== before) await restoreCount(sysfs, file, after);
      return { before, removed, after, surplus: await surplusOf(sysfs, sizeBytes, record.node), alreadyReleased: false };
    }
    const claim = claims.find((c) => c.claimId === id);
    if (claim === undefined) {
      const current = await readPersistent(sysfs, file);
      return { before: current, removed: 0, after: current, surplus: await surplusOf(sysfs, sizeBytes, record.node), alreadyReleased: true };
    }
    if (claim.node !== record.node) {
      throw new InvalidArgumentError('record.node', `${record.node} is not the pool of claim ${id} (${claim.node === null ? 'the global pool' : `node ${claim.node}`})`);
    }
    return releaseClaim(sysfs, dir, claims, claim, me);
  });
}

/**
 * Gives back the pages a claim of the ledger holds (see {@link reserveHugepages}), as
 * {@link releaseHugepages} does for a record with that `claimId`; undefined when no ledger holds
 * the claim (the reservation never got to write, rolled back, got nothing, or was released
 * already), and then nothing is written. For a caller that saves its own claim id before
 * {@link reserveHugepages} and crashes before it saves the record: the claim, settled by whoever
 * took the lock first after the crash, says exactly what that call added.
 *
 * `size` names the ledger to look in; without it, every ledger in the lock folder is searched
 * (each under its lock).
 *
 * Equivalent: under `flock /run/lock/vmpod/hugepages-2048kB.lock`, find the claim in
 * `hugepages-2048kB.json`, `echo $(($(cat F) - added)) > F; cat F`, then drop the claim.
 */
export async function releaseHugepageClaim(claimId: string, options: HugepageClaimOptions = {}): Promise<HugepageRelease | undefined> {
  const id = checkClaimId(claimId, 'claimId');
  const sysfs = sysfsOf(options);
  const sizes = options.size === undefined ? await ledgerSizes(await hostLockDir({ ...options, sysfs })) : [hugepageSize(options.size)];
  const me = await currentProcess();
  for (const sizeBytes of sizes) {
    const result = await withLedger(sizeBytes, options, sysfs, async (dir, claims) => {
      const claim = claims.find((c) => c.claimId === id);
      return claim === undefined ? undefined : releaseClaim(sysfs, dir, claims, claim, me);
    });
    if (result !== undefined) return result;
  }
  return undefined;
}

/**
 * Releases a claim under the lock (the caller holds it, and the claims are settled): marks it
 * `releasing` with the pool size read now, writes `before - added` (never below 0), reads it
 * back, then drops the claim. If the write does not read back, the claim is settled at what the
 * pool says is left of it; a process that dies in between leaves it `releasing` for the next lock
 * holder to settle the same way.
 */
async function releaseClaim(
  sysfs: Sysfs,
  dir: string,
  claims: readonly HugepageClaim[],
  claim: HugepageClaim,
  me: { pid: number; pidStart: number },
): Promise<HugepageRelease> {
  const file = poolFile(claim.sizeBytes, claim.node);
  const before = await readPersistent(sysfs, file);
  const removed = Math.min(before, claim.added);
  const after = before - removed;
  if (removed > 0) {
    const releasing: HugepageClaim = { ...claim, state: 'releasing', before, writer: me };
    await writeLedger(dir, claim.sizeBytes, replaceClaim(claims, claim, releasing));
    try {
      await restoreCount(sysfs, file, after);
    } catch (error) {
      try {
        const left = settledPages(releasing, await readPersistent(sysfs, file));
        await writeLedger(dir, claim.sizeBytes, replaceClaim(claims, claim, left === 0 ? undefined : settledClaim(releasing, left)));
      } catch {
        // The claim stays `releasing`: the next lock holder settles it from the pool as it is.
      }
      throw error;
    }
  }
  await writeLedger(dir, claim.sizeBytes, replaceClaim(claims, claim, undefined));
  return { before, removed, after, surplus: await surplusOf(sysfs, claim.sizeBytes, claim.node), alreadyReleased: false };
}

async function surplusOf(sysfs: Sysfs, sizeBytes: number, node: number | null): Promise<number> {
  return (await sysfs.readInt(`${node === null ? globalDir(sizeBytes) : nodeDir(node, sizeBytes)}/surplus_hugepages`)) ?? 0;
}

/** States of a claim in the hugepage ledger (see {@link HugepageClaim}). */
export type HugepageClaimState = 'writing' | 'held' | 'releasing';

/**
 * A claim in the hugepage ledger of one page size: one reservation, from the moment it is about
 * to write `nr_hugepages` until its release has read the pool back.
 *
 * - `writing`: the reservation is about to write (or is writing) `nr_hugepages`; `previous` is the
 *   pool size read under the lock before the write, `count` the pages asked, `added` 0.
 * - `held`: the reservation holds `added` pages (1 to `count`), as read back under the lock.
 * - `releasing`: a release is about to write (or is writing) `before - added`; `before` is the
 *   pool size it read under the lock.
 *
 * `writing` and `releasing` last only while their `writer` holds the lock. Whoever takes the lock
 * and finds one left (its writer died, or could not finish the ledger) settles it first, from the
 * pool as it is then, which no one else can have changed since the writer read it:
 * `writing` becomes `held` with `added = current - previous` (0 to `count`; removed when 0),
 * `releasing` keeps `added - (before - current)` pages (removed when none).
 */
export interface HugepageClaim {
  claimId: string;
  /** The `owner` option of the reservation, or `pid N`. */
  owner: string;
  /** The process that made the reservation (with `pidStart`, see `processStartTime` in host-lock.ts). */
  pid: number;
  /** Its start time in clock ticks after boot (field 22 of `/proc/PID/stat`; 0 when unknown). */
  pidStart: number;
  /** When the reservation was made (ISO 8601). */
  since: string;
  sizeBytes: number;
  /** NUMA node, or null for the global pool. */
  node: number | null;
  state: HugepageClaimState;
  /** Pages the reservation asked for. */
  count: number;
  /** Pool size read under the lock before the reservation's write. */
  previous: number;
  /** Pages the claim holds (`held`, `releasing`); 0 while `writing`. */
  added: number;
  /** `releasing`: the pool size read under the lock before the release's write. */
  before?: number;
  /** `writing`, `releasing`: the process doing the write, which holds the lock meanwhile. */
  writer?: { pid: number; pidStart: number };
}

/** A claim as {@link hugepageClaims} reports it. */
export interface HugepageClaimStatus extends HugepageClaim {
  /** Whether the process that made the reservation (`pid` started at `pidStart`) still runs. */
  alive: boolean;
  /** The ledger file. */
  ledger: string;
}

/**
 * The claims of the hugepage ledgers (one page size with `size`, else all), for diagnostics: who
 * holds how many pages of which pool, and whether that process still runs. A claim outlives its
 * process (a sandbox's pages stay reserved until the sandbox is deleted), so `alive: false` is
 * not a leak by itself; a claim that no record names any more is, and
 * {@link releaseHugepageClaim} gives its pages back.
 *
 * Read without the lock (the ledger is replaced at once, never written in place): a claim in
 * `writing` or `releasing` is either in progress or left by a process that died, and the next
 * process to take the lock settles it.
 *
 * Equivalent: `cat /run/lock/vmpod/hugepages-*kB.json`.
 */
export async function hugepageClaims(options: HugepageClaimOptions = {}): Promise<HugepageClaimStatus[]> {
  const dir = await hostLockDir({ ...options, sysfs: sysfsOf(options) });
  const sizes = options.size === undefined ? await ledgerSizes(dir) : [hugepageSize(options.size)];
  const out: HugepageClaimStatus[] = [];
  for (const sizeBytes of sizes) {
    for (const claim of await readLedger(dir, sizeBytes)) {
      out.push({ ...claim, alive: await processAlive(claim.pid, claim.pidStart), ledger: ledgerPath(dir, sizeBytes) });
    }
  }
  return out;
}

/** Version of the ledger format. */
const LEDGER_VERSION = 1;

/** The ledger of a page size, next to its lock: `hugepages-2048kB.json`. */
function ledgerPath(dir: string, sizeBytes: number): string {
  return path.join(dir, `${hugepageLockName(sizeBytes)}.json`);
}

/** The page sizes that have a ledger in the lock folder, smallest first. */
async function ledgerSizes(dir: string): Promise<number[]> {
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
  return names
    .map((n) => /^hugepages-(\d{1,10})kB\.json$/u.exec(n)?.[1])
    .filter((kb): kb is string => kb !== undefined)
    .map((kb) => Number(kb) * KiB)
    .filter((bytes) => Number.isSafeInteger(bytes) && bytes >= 4 * KiB && (bytes & (bytes - 1)) === 0)
    .sort((a, b) => a - b);
}

/** The claims of a ledger; none when there is no ledger. {@link HugepageLedgerError} when it cannot be read or used. */
async function readLedger(dir: string, sizeBytes: number): Promise<HugepageClaim[]> {
  const file = ledgerPath(dir, sizeBytes);
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new HugepageLedgerError(file, `cannot read it (${(cause as Error).message})`, { cause });
  }
  try {
    return parseLedger(JSON.parse(text) as unknown, sizeBytes);
  } catch (cause) {
    throw new HugepageLedgerError(
      file,
      `it cannot be used (${(cause as Error).message}): check its claims against the pools by hand, then move it away ` +
        '(its claims are then taken as released, and their pages stay in the pools)',
      { cause },
    );
  }
}

function parseLedger(value: unknown, sizeBytes: number): HugepageClaim[] {
  const v = (typeof value === 'object' && value !== null ? value : {}) as Record<string, unknown>;
  if (v['version'] !== LEDGER_VERSION) throw new InvalidArgumentError('version', `${JSON.stringify(v['version'])} is not ${LEDGER_VERSION}`);
  if (v['sizeBytes'] !== sizeBytes) throw new InvalidArgumentError('sizeBytes', `${JSON.stringify(v['sizeBytes'])} is not ${sizeBytes}`);
  if (!Array.isArray(v['claims'])) throw new InvalidArgumentError('claims', 'must be an array');
  const claims = (v['claims'] as unknown[]).map((c, i) => parseClaim(c, `claims[${i}]`, sizeBytes));
  const ids = new Set(claims.map((c) => c.claimId));
  if (ids.size !== claims.length) throw new InvalidArgumentError('claims', 'a claim id appears twice');
  return claims;
}

function parseClaim(value: unknown, field: string, sizeBytes: number): HugepageClaim {
  if (typeof value !== 'object' || value === null) throw new InvalidArgumentError(field, 'must be an object');
  const c = value as Record<string, unknown>;
  const state = c['state'];
  if (state !== 'writing' && state !== 'held' && state !== 'releasing') {
    throw new InvalidArgumentError(`${field}.state`, `${JSON.stringify(state)} is not writing, held or releasing`);
  }
  if (c['sizeBytes'] !== sizeBytes) throw new InvalidArgumentError(`${field}.sizeBytes`, `${JSON.stringify(c['sizeBytes'])} is not ${sizeBytes}`);
  if (typeof c['since'] !== 'string' || c['since'].length > 64) throw new InvalidArgumentError(`${field}.since`, 'must be a date');
  const count = integer(c['count'], `${field}.count`, 1, 2 ** 31 - 1);
  const claim: HugepageClaim = {
    claimId: checkClaimId(c['claimId'], `${field}.claimId`),
    owner: claimOwner(c['owner'], `${field}.owner`),
    pid: integer(c['pid'], `${field}.pid`, 0, 2 ** 31 - 1),
    pidStart: integer(c['pidStart'], `${field}.pidStart`, 0, Number.MAX_SAFE_INTEGER),
    since: c['since'],
    sizeBytes,
    node: c['node'] === null ? null : integer(c['node'], `${field}.node`, 0, 1023),
    state,
    count,
    previous: integer(c['previous'], `${field}.previous`, 0, 2 ** 31 - 1),
    added: state === 'writing' ? integer(c['added'], `${field}.added`, 0, 0) : integer(c['added'], `${field}.added`, 1, count),
  };
  if (state === 'releasing') claim.before = integer(c['before'], `${field}.before`, 0, 2 ** 31 - 1);
  if (state !== 'held') {
    const w = (typeof c['writer'] === 'object' && c['writer'] !== null ? c['writer'] : {}) as Record<string, unknown>;
    claim.writer = {
      pid: integer(w['pid'], `${field}.writer.pid`, 0, 2 ** 31 - 1),
      pidStart: integer(w['pidStart'], `${field}.writer.pidStart`, 0, Number.MAX_SAFE_INTEGER),
    };
  }
  return claim;
}

/** Replaces a ledger at once (0600), or removes it when no claim is left. */
async function writeLedger(dir: string, sizeBytes: number, claims: readonly HugepageClaim[]): Promise<void> {
  const file = ledgerPath(dir, sizeBytes);
  try {
    if (claims.length === 0) await fs.rm(file, { force: true });
    else await writeHostFile(file, `${JSON.stringify({ version: LEDGER_VERSION, sizeBytes, claims }, null, 2)}\n`);
  } catch (cause) {
    throw new HugepageLedgerError(file, `cannot write it (${(cause as Error).message})`, { cause });
  }
}

/** The claims with `claim` replaced by `next` (or dropped), in their order. */
function replaceClaim(claims: readonly HugepageClaim[], claim: HugepageClaim, next: HugepageClaim | undefined): HugepageClaim[] {
  return claims.flatMap((c) => (c !== claim ? [c] : next === undefined ? [] : [next]));
}

/**
 * Pages an unfinished claim holds, from the pool size now (read under the lock, with nothing
 * changed since its writer read the pool): `writing`, what the pool grew by (0 to `count`);
 * `releasing`, what the pool has not yet shrunk by (0 to `added`).
 */
function settledPages(claim: HugepageClaim, current: number): number {
  if (claim.state === 'held') return claim.added;
  if (claim.state === 'writing') return Math.max(0, Math.min(current - claim.previous, claim.count));
  const gone = Math.max(0, Math.min((claim.before ?? current) - current, claim.added));
  return claim.added - gone;
}

/** The claim, `held` with `added` pages. */
function settledClaim(claim: HugepageClaim, added: number): HugepageClaim {
  const { before: _before, writer: _writer, ...rest } = claim;
  return { ...rest, state: 'held', added };
}

/**
 * Runs `fn` under the host lock of a page size with the ledger's claims, after settling the
 * claims left `writing` or `releasing` (by a process that died, or could not finish its ledger):
 * no pool of that size is written before they are, since each is settled from the pool as its
 * writer left it. A pool that cannot be read stops the call.
 */
async function withLedger<T>(
  sizeBytes: number,
  options: HugepageOptions,
  sysfs: Sysfs,
  fn: (dir: string, claims: HugepageClaim[]) => Promise<T>,
): Promise<T> {
  const { dir, lock } = await acquireHostLock(hugepageLockName(sizeBytes), { ...options, sysfs });
  try {
    let claims = await readLedger(dir, sizeBytes);
    if (claims.some((c) => c.state !== 'held')) {
      const settled: HugepageClaim[] = [];
      for (const c of claims) {
        const pages = c.state === 'held' ? c.added : settledPages(c, await readPersistent(sysfs, poolFile(sizeBytes, c.node)));
        if (pages > 0) settled.push(c.state === 'held' ? c : settledClaim(c, pages));
      }
      await writeLedger(dir, sizeBytes, settled);
      claims = settled;
    }
    return await fn(dir, claims);
  } finally {
    await lock.release();
  }
}

/** A hugetlbfs mount. */
export interface HugetlbfsOptions {
  /** Page size of the mount (default 2 MiB); must be one the host offers. */
  pageSize?: number | string | undefined;
  /** Upper bound of the mount's size in bytes (`size=`), a multiple of the page size; default unbounded. */
  sizeBytes?: number | undefined;
  /** Mount point to use (an existing empty directory); default: a new private directory under `parent`. */
  path?: string | undefined;
  /** Where to create the private mount point (default `/run/vmpod/hugepages`). */
  parent?: string | undefined;
  /** Mode of the mount's root (default 0o700). */
  mode?: number | undefined;
  uid?: number | undefined;
  gid?: number | undefined;
}

/** A mounted hugetlbfs; {@link unmount} removes it (and the mount point vmpod created). */
export class HugetlbfsMount {
  private mounted = true;

  constructor(
    /** Mount point. */
    readonly path: string,
    readonly pageSizeBytes: number,
    readonly sizeBytes: number | undefined,
    /** Whether vmpod created the mount point (and so removes it). */
    readonly createdMountPoint: boolean,
  ) {}

  /**
   * Unmounts (fails with EBUSY while files are mapped, unless `detach`), then removes the mount
   * point if vmpod created it. Idempotent.
   *
   * Equivalent: `umount [-l] PATH && rmdir PATH`.
   */
  async unmount(options: { detach?: boolean } = {}): Promise<void> {
    if (this.mounted) {
      await unmount(this.path, { detach: options.detach ?? false });
      this.mounted = false;
    }
    if (this.createdMountPoint) {
      await fs.rmdir(this.path).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw e;
      });
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.unmount();
  }
}

/**
 * Mounts a hugetlbfs of one page size on a private mount point (mode 0700, propagation private).
 *
 * Equivalent: `mount -t hugetlbfs -o pagesize=2M,size=64M,mode=0700 nodev DIR && mount --make-private DIR`.
 */
export async function mountHugetlbfs(options: HugetlbfsOptions = {}, sysfsOptions: SysfsOptions = {}): Promise<HugetlbfsMount> {
  const pageSizeBytes = hugepageSize(options.pageSize ?? 2 * KiB * KiB, 'pageSize');
  const sizeBytes = options.sizeBytes === undefined ? undefined : integer(options.sizeBytes, 'sizeBytes', pageSizeBytes, Number.MAX_SAFE_INTEGER);
  if (sizeBytes !== undefined && sizeBytes % pageSizeBytes !== 0) {
    throw new InvalidArgumentError('sizeBytes', `${sizeBytes} is not a multiple of the page size ${pageSizeBytes}`);
  }
  const mode = integer(options.mode ?? 0o700, 'mode', 0, 0o7777);
  const uid = options.uid === undefined ? undefined : integer(options.uid, 'uid', 0, 2 ** 32 - 2);
  const gid = options.gid === undefined ? undefined : integer(options.gid, 'gid', 0, 2 ** 32 - 2);
  const given = options.path === undefined ? undefined : absolutePath(options.path, 'path');
  const parent = absolutePath(options.parent ?? '/run/vmpod/hugepages', 'parent');
  await hugepagePool(pageSizeBytes, sysfsOptions); // the size must exist

  const data = [
    `pagesize=${pageSizeBytes / KiB}K`,
    ...(sizeBytes === undefined ? [] : [`size=${sizeBytes}`]),
    `mode=${mode.toString(8).padStart(4, '0')}`,
    ...(uid === undefined ? [] : [`uid=${uid}`]),
    ...(gid === undefined ? [] : [`gid=${gid}`]),
  ].join(',');

  let target = given;
  if (target === undefined) {
    await fs.mkdir(parent, { recursive: true, mode: 0o700 });
    target = await fs.mkdtemp(path.join(parent, 'hp-'));
  }
  let mounted = false;
  try {
    await mount(target, { source: 'hugetlbfs', fstype: 'hugetlbfs', flags: ['nosuid', 'nodev'], data });
    mounted = true;
    await mount(target, { flags: ['private'] });
  } catch (error) {
    if (mounted) await unmount(target).catch(() => undefined);
    if (given === undefined) await fs.rmdir(target).catch(() => undefined);
    throw error;
  }
  return new HugetlbfsMount(target, pageSizeBytes, sizeBytes, given === undefined);
}
