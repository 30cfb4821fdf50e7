/**
 * Hugepages volumes: a hugetlbfs of 2 MiB pages in the guest (`mount -t hugetlbfs -o
 * pagesize=2M,size=NM nodev DIR` by the agent). The guest kernel reserves the pages at boot
 * (`hugepagesz=2M hugepages=N`, see ../hugepages.ts), so a DPDK-style program in a container
 * can map files there.
 *
 * @internal
 * @module
 */
import { InvalidArgumentError } from '../../../errors.js';
import type { HugepagesVolume } from '../../../volume/spec.js';
import { guestMemoryDriver } from './driver.js';

export const hugepagesDriver = guestMemoryDriver(
  (spec) => ({ type: 'hugetlbfs', options: ['pagesize=2M', `size=${(spec as HugepagesVolume).sizeMiB}M`, 'mode=1777'] }),
  (ctx, volume, others) => {
    const reserved = ctx.config.hugepages?.guestPages ?? 0;
    const spec = volume.spec as HugepagesVolume;
    // The other hugepages volumes' sizes are already promised out of the same guest pages.
    const promised = others
      .filter((v) => v !== volume && v.spec.kind === 'hugepages')
      .reduce((pages, v) => pages + (v.spec as HugepagesVolume).sizeMiB / 2, 0);
    if (promised + spec.sizeMiB / 2 > reserved) {
      throw new InvalidArgumentError(
        'volume.sizeMiB',
        `the guest kernel of this sandbox reserved ${reserved} hugepages (2 MiB) at boot, ${promised} of them for other hugepages volumes: ${spec.sizeMiB / 2} more do not fit (set hugepages.guestPages when creating the sandbox)`,
      );
    }
  },
);
