/**
 * Hugepages of a sandbox as a {@link SandboxResource}: guest RAM on host hugepages (pages
 * reserved with read-back, a private hugetlbfs mount in the sandbox folder, QEMU
 * `-object memory-backend-file,mem-path=MOUNT,share=on[,prealloc=on]`), and the hugepages the
 * guest kernel reserves for its containers (`hugepagesz=2M hugepages=N`).
 *
 * The host ends exactly as it was after stop, delete or a failed start: the mount is gone and
 * the pool is back to its size before (see `releaseHugepages` for concurrent users).
 *
 * @internal
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { SystemError } from '../errors.js';
import {
  hugepagePool,
  mountHugetlbfs,
  releaseHugepages,
  reserveHugepages,
  type HugepageReservationRecord,
} from '../devices/hugepages.js';
import { unmount } from '../devices/mount.js';
import type { ResourceContext, SandboxResource, VmContribution } from '../sandbox/resource.js';
import type { ResolvedNfvConfig } from './config.js';

/** Key of this resource's state in the sandbox record. */
export const HUGEPAGES_KIND = 'hugepages';

interface HugepagesState {
  /** About to write nr_hugepages: the pool size before, and the pages asked. */
  pending?: { sizeBytes: number; previous: number; count: number };
  reservation?: HugepageReservationRecord;
  /** The hugetlbfs mount point (recorded before mounting). */
  mountPoint?: string;
}

/** The kernel arguments that make the guest reserve `pages` 2 MiB pages at boot. */
export function guestHugepageArgs(pages: number): string[] {
  return pages > 0 ? ['hugepagesz=2M', `hugepages=${pages}`] : [];
}

export class HugepagesResource implements SandboxResource {
  readonly kind = HUGEPAGES_KIND;

  async prepare(ctx: ResourceContext): Promise<VmContribution> {
    const hp = (ctx.config as Partial<ResolvedNfvConfig>).hugepages;
    if (!hp) return {};
    const kernelArgs = guestHugepageArgs(hp.guestPages);
    if (!hp.backRam) return { kernelArgs };
    const sysfs = (ctx.config as Partial<ResolvedNfvConfig>).sysfs ?? '/sys';
    const state: HugepagesState = { ...((ctx.state as HugepagesState | undefined) ?? {}) };
    const bytes = ctx.config.memoryMiB * 1024 * 1024;
    const count = bytes / hp.pageSizeBytes;

    const pool = await hugepagePool(hp.pageSizeBytes, { sysfs });
    state.pending = { sizeBytes: hp.pageSizeBytes, previous: pool.total, count };
    await ctx.save(state);
    // Throws InsufficientHugepagesError with the pool put back when the kernel gives fewer pages.
    const reservation = await reserveHugepages({ size: hp.pageSizeBytes, count }, { sysfs });
    state.reservation = reservation.toJSON();
    delete state.pending;
    await ctx.save(state);

    state.mountPoint = path.join(ctx.dir, 'hugepages');
    await ctx.save(state);
    await fs.mkdir(state.mountPoint, { recursive: true, mode: 0o700 });
    await mountHugetlbfs({ path: state.mountPoint, pageSize: hp.pageSizeBytes, sizeBytes: bytes }, { sysfs });
    return {
      memoryBackend: { kind: 'file', path: state.mountPoint },
      sharedMemory: true,
      ...(hp.prealloc ? { prealloc: true } : {}),
      kernelArgs,
    };
  }

  async release(ctx: ResourceContext): Promise<void> {
    const state: HugepagesState = { ...((ctx.state as HugepagesState | undefined) ?? {}) };
    const sysfs = (ctx.config as Partial<ResolvedNfvConfig>).sysfs ?? '/sys';
    const failures: unknown[] = [];
    if (state.mountPoint !== undefined) {
      try {
        await unmount(state.mountPoint, { detach: true, noFollow: true }).catch((error: unknown) => {
          if (!(error instanceof SystemError && (error.errnoName === 'EINVAL' || error.errnoName === 'ENOENT'))) throw error;
        });
        await fs.rmdir(state.mountPoint).catch((error: NodeJS.ErrnoException) => {
          if (error.code !== 'ENOENT') throw error;
        });
        delete state.mountPoint;
      } catch (error) {
        failures.push(error);
      }
    }
    try {
      if (state.reservation) {
        await releaseHugepages(state.reservation, { sysfs });
        delete state.reservation;
      } else if (state.pending) {
        // A crash between the write and its record: undo it only if the pool is exactly what it made.
        const p = state.pending;
        const pool = await hugepagePool(p.sizeBytes, { sysfs });
        if (pool.total === p.previous + p.count) {
          await releaseHugepages({ sizeBytes: p.sizeBytes, node: null, previous: p.previous, obtained: pool.total }, { sysfs });
        }
      }
      delete state.pending;
    } catch (error) {
      failures.push(error);
    }
    await ctx.save(state);
    if (failures.length > 0) throw failures[0];
  }
}
