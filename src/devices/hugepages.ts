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
 * Sysfs: `kernel/mm/hugepages/hugepages-<kB>kB/` (global pools) and
 * `devices/system/node/node<N>/hugepages/hugepages-<kB>kB/` (per node), under an injectable root.
 *
 * @module
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { InvalidArgumentError, NotFoundError } from '../errors.js';
import { absolutePath, integer } from '../validate.js';
import { InsufficientHugepagesError, SysfsReadbackError, UnsupportedHugepageSizeError } from './errors.js';
import { acquireHostLock, keptLockOptions, type HostLockOptions } from './host-lock.js';
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
 * lock, and what {@link releaseHugepages} takes off the pool again.
 */
export interface HugepageReservationRecord {
  sizeBytes: number;
  /** NUMA node, or null for the global pool. */
  node: number | null;
  /** Pool size before the reservation (read under the host lock). */
  previous: number;
  /** Pool size read back after it: `previous` + the pages the kernel actually gave (at most `count`). */
  obtained: number;
}

/** What {@link releaseHugepages} did. */
export interface HugepageRelease {
  /** Pool size read under the host lock before the release. */
  before: number;
  /** Pages taken off the pool: the record's `obtained - previous`, at most `before`. */
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
}

/** Options of {@link reserveHugepages} and {@link releaseHugepages}: the sysfs tree and the host lock. */
export interface HugepageOptions extends SysfsOptions, HostLockOptions {}

/** Pages added to a hugepage pool; {@link release} puts the pool back. */
export class HugepageReservation implements HugepageReservationRecord {
  readonly sizeBytes: number;
  readonly node: number | null;
  readonly previous: number;
  readonly obtained: number;
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
   * what happened; idempotent (undefined once released).
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
    return { sizeBytes: this.sizeBytes, node: this.node, previous: this.previous, obtained: this.obtained };
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
 * Equivalent: `flock /run/lock/vmpod/hugepages-2048kB.lock sh -c 'echo $(($(cat F) + count)) > F; cat F'`
 * with `F=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages` (or
 * `/sys/devices/system/node/nodeN/hugepages/...`).
 */
export async function reserveHugepages(request: HugepageRequest, options: HugepageOptions = {}): Promise<HugepageReservation> {
  const sizeBytes = hugepageSize(request.size, 'size');
  const count = integer(request.count, 'count', 1, 2 ** 31 - 1);
  const node = request.node === undefined ? undefined : integer(request.node, 'node', 0, 1023);
  const sysfs = sysfsOf(options);
  // What does not exist is refused before taking the lock, and checked again under it.
  const pools = await listHugepages({ sysfs });
  const known = pools.find((p) => p.sizeBytes === sizeBytes);
  if (!known) throw new UnsupportedHugepageSizeError(sizeBytes, pools.map((p) => p.sizeBytes));
  if (node !== undefined && !known.nodes.some((n) => n.node === node)) {
    throw new NotFoundError('NUMA node', String(node));
  }
  const { lock } = await acquireHostLock(hugepageLockName(sizeBytes), { ...options, sysfs });
  try {
    const now = await listHugepages({ sysfs });
    const pool = now.find((p) => p.sizeBytes === sizeBytes);
    if (!pool) throw new UnsupportedHugepageSizeError(sizeBytes, now.map((p) => p.sizeBytes));
    const file = `${node === undefined ? globalDir(sizeBytes) : nodeDir(node, sizeBytes)}/nr_hugepages`;
    const previous = await readCount(sysfs, file);
    const requested = previous + count;

    // Asking for more than the memory there is can only fail, after squeezing every cache on the
    // host: refuse it up front. Pages of the other sizes already take their share.
    const others = now
      .filter((p) => p !== pool)
      .reduce((sum, p) => sum + p.sizeBytes * (node === undefined ? p.total : (p.nodes.find((n) => n.node === node)?.total ?? 0)), 0);
    if (requested * sizeBytes + others > (await memTotal(sysfs, node))) {
      throw new InsufficientHugepagesError(sizeBytes, node, previous, requested, previous, false, false);
    }

    try {
      await sysfs.write(file, String(requested));
    } catch (cause) {
      // The kernel refused the write; make sure it left nothing half-done.
      const back = await sysfs.readInt(file).catch(() => undefined);
      if (back !== undefined && back !== previous) await restoreCount(sysfs, file, previous).catch(() => undefined);
      throw cause;
    }
    // The kernel may give fewer pages than asked, never more; anything above `requested` would be
    // someone writing the file without the lock, and is not this reservation's.
    const obtained = Math.max(previous, Math.min(await readCount(sysfs, file), requested));
    if (obtained < requested && !request.allowPartial) {
      let rolledBack = obtained === previous;
      let cause: unknown;
      if (!rolledBack) {
        try {
          // Relative to the pool as it is: take off what this call added, nothing else.
          const back = await readCount(sysfs, file);
          await restoreCount(sysfs, file, Math.max(0, back - (obtained - previous)));
          rolledBack = true;
        } catch (e) {
          cause = e;
        }
      }
      throw new InsufficientHugepagesError(sizeBytes, node, previous, requested, obtained, true, rolledBack, cause === undefined ? {} : { cause });
    }
    return new HugepageReservation({ sizeBytes, node: node ?? null, previous, obtained }, requested, sysfs, options);
  } finally {
    await lock.release();
  }
}

/** Name of the host lock of one page size's pools (global and per node). */
function hugepageLockName(sizeBytes: number): string {
  return `hugepages-${sizeBytes / KiB}kB`;
}

/** Writes `value` and checks that it reads back. */
async function restoreCount(sysfs: Sysfs, file: string, value: number): Promise<void> {
  await sysfs.write(file, String(value));
  const back = await readCount(sysfs, file);
  if (back !== value) throw new SysfsReadbackError(sysfs.path(file), String(value), String(back));
}

/**
 * Takes a reservation's pages off its pool again: under the host lock of the page size, reads the
 * pool size now and writes it minus the pages the record says it added (`obtained - previous`),
 * never below 0, then reads it back. The arithmetic is relative to the pool as it is, not a write
 * of the old size, so pages that other reservations added meanwhile stay. Pages still mapped
 * become surplus pages and return to the system when unmapped: see {@link HugepageRelease.surplus}.
 *
 * Records written by earlier versions of vmpod (same fields, made without the host lock) are
 * released the same way. Two such records made in a race may both count the same pages, which
 * cannot be told from them: releasing both then removes those pages twice (down to 0 at most), as
 * those versions did.
 *
 * A record read back from disk is input: it is checked before anything is read or written.
 * Calling this twice with one record removes its pages twice: drop the record once it returns.
 *
 * Equivalent: `flock /run/lock/vmpod/hugepages-2048kB.lock sh -c 'echo $(($(cat F) - added)) > F; cat F'`.
 */
export async function releaseHugepages(record: HugepageReservationRecord, options: HugepageOptions = {}): Promise<HugepageRelease> {
  const sysfs = sysfsOf(options);
  // A record read back from disk is input too.
  const sizeBytes = hugepageSize(record?.sizeBytes, 'record.sizeBytes');
  if (record.node !== null) integer(record.node, 'record.node', 0, 1023);
  integer(record.previous, 'record.previous', 0, 2 ** 31 - 1);
  integer(record.obtained, 'record.obtained', record.previous, 2 ** 31 - 1);
  const dir = record.node === null ? globalDir(sizeBytes) : nodeDir(record.node, sizeBytes);
  const file = `${dir}/nr_hugepages`;
  const { lock } = await acquireHostLock(hugepageLockName(sizeBytes), { ...options, sysfs });
  try {
    const before = await readCount(sysfs, file);
    const removed = Math.min(before, record.obtained - record.previous);
    const after = before - removed;
    if (after !== before) await restoreCount(sysfs, file, after);
    const surplus = (await sysfs.readInt(`${dir}/surplus_hugepages`)) ?? 0;
    return { before, removed, after, surplus };
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
