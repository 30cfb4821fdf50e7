/**
 * Hugepages volumes: a hugetlbfs of 2 MiB pages in the guest (`mount -t hugetlbfs -o
 * pagesize=2M,size=NM nodev DIR` by the agent). The guest kernel reserves the pages at boot
 * (`hugepagesz=2M hugepages=N`, see src/nfv/hugepages.ts), so a DPDK-style program in a
 * container can map files there.
 *
 * @internal
 * @module
 */
import { InvalidArgumentError } from '../errors.js';
import type { GuestContext } from '../sandbox/resource.js';
import { callOptions, guestVolumeDir, type VolumeDriver, type VolumeState } from './driver.js';
import type { HugepagesVolume } from './spec.js';

async function mountHugetlbfs(ctx: GuestContext, state: VolumeState): Promise<void> {
  const spec = state.spec as HugepagesVolume;
  const target = guestVolumeDir(ctx.guestStateDir, spec.name);
  await ctx.agent.mount({ type: 'hugetlbfs', target, options: ['pagesize=2M', `size=${spec.sizeMiB}M`, 'mode=1777'] }, callOptions(ctx));
  state.guestPath = target;
}

export const hugepagesDriver: VolumeDriver = {
  async prepare() {
    return [];
  },
  async attach(ctx, state, save) {
    await mountHugetlbfs(ctx, state);
    await save();
  },
  async hotplug(ctx, state, save) {
    const reserved = ctx.config.hugepages?.guestPages ?? 0;
    const spec = state.spec as HugepagesVolume;
    // The other hugepages volumes' sizes are already promised out of the same guest pages.
    const volumes = (ctx.state as { volumes?: VolumeState[] } | undefined)?.volumes ?? [];
    const promised = volumes.filter((v) => v !== state && v.spec.kind === 'hugepages')
      .reduce((pages, v) => pages + (v.spec as HugepagesVolume).sizeMiB / 2, 0);
    if (promised + spec.sizeMiB / 2 > reserved) {
      throw new InvalidArgumentError(
        'volume.sizeMiB',
        `the guest kernel of this sandbox reserved ${reserved} hugepages (2 MiB) at boot, ${promised} of them for other hugepages volumes: ${spec.sizeMiB / 2} more do not fit (set hugepages.guestPages when creating the sandbox)`,
      );
    }
    await hugepagesDriver.attach(ctx, state, save);
  },
  async detach(ctx, state, save) {
    if (state.guestPath !== undefined) await ctx.agent.unmount(state.guestPath, callOptions(ctx));
    delete state.guestPath;
    await save();
  },
  async release(_ctx, state, save) {
    delete state.guestPath;
    await save();
  },
};
