/**
 * Hugepages of a sandbox as a {@link SandboxResource}: guest RAM on host hugepages (pages
 * reserved with read-back, a private hugetlbfs mount in the sandbox folder, QEMU
 * `-object memory-backend-file,mem-path=MOUNT,share=on[,prealloc=on]`), and the hugepages the
 * guest kernel reserves for its containers (`hugepagesz=2M hugepages=N`).
 *
 * The host ends exactly as it was after stop, delete or a failed start: the mount is gone and
 * the pool gives back exactly the pages this sandbox added, whatever other sandboxes did
 * meanwhile. The reservation is a claim in the host's hugepage ledger, recorded here before it is
 * made, so a release after any crash is exact and never done twice (src/devices/hugepages.ts).
 *
 * @internal
 * @module
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { runAll } from '../../cleanup.js';
import { SystemError } from '../../errors.js';
import { mountHugetlbfs, releaseHugepageClaim, releaseHugepages, reserveHugepages, type HugepageReservationRecord } from '../../devices/hugepages.js';
import { unmount } from '../../devices/mount.js';
import type { ResourceContext, SandboxResource, VmContribution } from './resource.js';

/** Key of this resource's state in the sandbox record. */
export const HUGEPAGES_KIND = 'hugepages';

interface HugepagesState {
  /**
   * The host-wide claim of this boot's reservation, recorded BEFORE the reservation: after a crash
   * anywhere in it, the host's ledger says exactly what the claim holds (src/devices/hugepages.ts).
   */
  claim?: { claimId: string; sizeBytes: number };
  /** The reservation once made (it carries the same claim id). */
  reservation?: HugepageReservationRecord;
  /** The hugetlbfs mount point (recorded before mounting). */
  mountPoint?: string;
}

/** The kernel arguments that make the guest reserve `pages` 2 MiB pages at boot. */
export function guestHugepageArgs(pages: number): string[] {
  return pages > 0 ? ['hugepagesz=2M', `hugepages=${pages}`] : [];
}

function parseState(value: unknown): HugepagesState {
  const v = (typeof value === 'object' && value !== null ? value : {}) as Record<string, unknown>;
  const state: HugepagesState = {};
  const claim = v['claim'] as HugepagesState['claim'] | undefined;
  if (claim && typeof claim.claimId === 'string' && /^[A-Za-z0-9_.:-]{1,128}$/u.test(claim.claimId) && Number.isInteger(claim.sizeBytes) && claim.sizeBytes > 0) {
    state.claim = { claimId: claim.claimId, sizeBytes: claim.sizeBytes };
  }
  if (typeof v['reservation'] === 'object' && v['reservation'] !== null) state.reservation = v['reservation'] as HugepageReservationRecord;
  if (typeof v['mountPoint'] === 'string' && v['mountPoint'].startsWith('/')) state.mountPoint = v['mountPoint'];
  return state;
}

export class HugepagesResource implements SandboxResource<HugepagesState> {
  readonly kind = HUGEPAGES_KIND;

  parse(value: unknown): HugepagesState {
    return parseState(value);
  }

  async prepare(ctx: ResourceContext<HugepagesState>): Promise<VmContribution> {
    const hp = ctx.config.hugepages;
    if (!hp) return {};
    const kernelArgs = guestHugepageArgs(hp.guestPages);
    if (!hp.backRam) return { kernelArgs };
    const sysfs = ctx.config.sysfs ?? '/sys';
    const bytes = ctx.config.memoryMiB * 1024 * 1024;
    const count = bytes / hp.pageSizeBytes;
    const mountPoint = path.join(ctx.dir, 'hugepages');
    await ctx.update(async (state, save) => {
      const claimId = `${ctx.sandboxId}:hugepages:${randomUUID()}`;
      state.claim = { claimId, sizeBytes: hp.pageSizeBytes };
      await save();
      // Throws InsufficientHugepagesError with the pool put back when the kernel gives fewer pages.
      const reservation = await reserveHugepages({ size: hp.pageSizeBytes, count }, { sysfs, claimId, owner: `sandbox ${ctx.sandboxId}` });
      state.reservation = reservation.toJSON();
      state.mountPoint = mountPoint;
      await save();
      await fs.mkdir(mountPoint, { recursive: true, mode: 0o700 });
      await mountHugetlbfs({ path: mountPoint, pageSize: hp.pageSizeBytes, sizeBytes: bytes }, { sysfs });
    });
    return {
      memoryBackend: { kind: 'file', path: mountPoint },
      sharedMemory: true,
      ...(hp.prealloc ? { prealloc: true } : {}),
      kernelArgs,
    };
  }

  async release(ctx: ResourceContext<HugepagesState>): Promise<void> {
    const sysfs = ctx.config.sysfs ?? '/sys';
    await ctx.update(async (state, save) => {
      await runAll(
        [
          [
            'hugetlbfs mount',
            async () => {
              if (state.mountPoint === undefined) return;
              await unmount(state.mountPoint, { detach: true, noFollow: true }).catch((error: unknown) => {
                if (!(error instanceof SystemError && (error.errnoName === 'EINVAL' || error.errnoName === 'ENOENT'))) throw error;
              });
              await fs.rmdir(state.mountPoint).catch((error: NodeJS.ErrnoException) => {
                if (error.code !== 'ENOENT') throw error;
              });
              delete state.mountPoint;
              await save();
            },
          ],
          [
            'hugepages',
            async () => {
              // Idempotent: a reservation released before a crash is not released twice (the ledger says).
              if (state.reservation) await releaseHugepages(state.reservation, { sysfs });
              // A crash before the reservation was recorded: exactly what its claim holds (maybe nothing).
              else if (state.claim) await releaseHugepageClaim(state.claim.claimId, { sysfs, size: state.claim.sizeBytes });
              delete state.reservation;
              delete state.claim;
              await save();
            },
          ],
        ],
        'could not release the hugepages',
      );
    });
  }
}
