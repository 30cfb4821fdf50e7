/**
 * Ephemeral volumes: a tmpfs in guest RAM (`mount -t tmpfs -o size=NM,mode=1777 tmpfs DIR` by
 * the agent), shared by the sandbox's containers and gone with the VM. Nothing on the host.
 *
 * @internal
 * @module
 */
import type { TmpfsVolume } from '../../../volume/spec.js';
import { guestMemoryDriver } from './driver.js';

export const tmpfsDriver = guestMemoryDriver((spec) => {
  const { sizeMiB } = spec as TmpfsVolume;
  return { type: 'tmpfs', options: ['mode=1777', 'nosuid', 'nodev', ...(sizeMiB === undefined ? [] : [`size=${sizeMiB}m`])] };
});
