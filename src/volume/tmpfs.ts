/**
 * Ephemeral volumes: a tmpfs in guest RAM (`mount -t tmpfs -o size=NM,mode=1777 tmpfs DIR` by
 * the agent), shared by the sandbox's containers and gone with the VM. Nothing on the host.
 *
 * @internal
 * @module
 */
import { callOptions, guestVolumeDir, type VolumeDriver, type VolumeState } from './driver.js';
import type { TmpfsVolume } from './spec.js';
import type { GuestContext } from '../sandbox/resource.js';

async function mountTmpfs(ctx: GuestContext, state: VolumeState): Promise<void> {
  const spec = state.spec as TmpfsVolume;
  const target = guestVolumeDir(ctx.guestStateDir, spec.name);
  const options = ['mode=1777', 'nosuid', 'nodev', ...(spec.sizeMiB === undefined ? [] : [`size=${spec.sizeMiB}m`])];
  await ctx.agent.mount({ type: 'tmpfs', target, options }, callOptions(ctx));
  state.guestPath = target;
}

export const tmpfsDriver: VolumeDriver = {
  async prepare() {
    return [];
  },
  async attach(ctx, state, save) {
    await mountTmpfs(ctx, state);
    await save();
  },
  async hotplug(ctx, state, save) {
    await tmpfsDriver.attach(ctx, state, save);
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
