/**
 * Block volumes: an ext4 filesystem in a raw or qcow2 image or on a host block device, as a
 * virtio-blk disk whose serial is `vol-NAME`. On q35 it sits on a PCIe root port, so it can be
 * hot plugged into a running sandbox (QMP `blockdev-add` x2 + `device_add virtio-blk-pci`) and
 * unplugged (`device_del`, wait for the guest, `blockdev-del`). The agent finds it by serial
 * (`/sys/block/vdX/serial`) and mounts it (`mount -t ext4 [-o ro] /dev/vdX DIR`).
 *
 * @internal
 * @module
 */
import fs from 'node:fs/promises';
import type { VirtioBlkDevice } from '../hypervisor/hypervisor.js';
import type { GuestContext } from '../sandbox/resource.js';
import { callOptions, guestVolumeDir, type VolumeDriver, type VolumeState } from './driver.js';
import { checkHostPath } from './host-path.js';
import type { BlockVolume } from './spec.js';

function specOf(state: VolumeState): BlockVolume {
  return state.spec as BlockVolume;
}

/** The disk serial (and VM device id) of volume `name`. */
export function blockSerial(name: string): string {
  return `vol-${name}`;
}

/** The VM device of a block volume. */
export function blockDevice(spec: BlockVolume, rootPort: boolean): VirtioBlkDevice {
  return {
    kind: 'virtio-blk',
    id: blockSerial(spec.name),
    path: spec.source,
    format: spec.format ?? 'raw',
    serial: blockSerial(spec.name),
    ...(spec.readOnly ? { readOnly: true } : {}),
    ...(rootPort ? { rootPort: true } : {}),
  };
}

async function mountInGuest(ctx: GuestContext, state: VolumeState): Promise<void> {
  const spec = specOf(state);
  const target = guestVolumeDir(ctx.guestStateDir, spec.name);
  await ctx.agent.mount(
    { type: 'ext4', device: { serial: blockSerial(spec.name) }, target, readOnly: spec.readOnly === true, timeoutMs: 30_000 },
    callOptions(ctx),
  );
  state.guestPath = target;
}

export const blockDriver: VolumeDriver = {
  async prepare(ctx, state, save) {
    const spec = specOf(state);
    await checkHostPath(spec.name, spec.source, 'file-or-block', spec.readOnly === true);
    state.device = blockSerial(spec.name);
    await save();
    return [blockDevice(spec, ctx.config.machine === 'q35')];
  },

  async attach(ctx, state, save) {
    await mountInGuest(ctx, state);
    await save();
  },

  async hotplug(ctx, state, save) {
    const spec = specOf(state);
    await checkHostPath(spec.name, spec.source, 'file-or-block', spec.readOnly === true);
    state.device = blockSerial(spec.name);
    await ctx.vm.hotplug(blockDevice(spec, false), callOptions(ctx));
    await save();
    try {
      await mountInGuest(ctx, state);
    } catch (error) {
      await ctx.vm.unplug(state.device, callOptions(ctx)).catch(() => undefined);
      delete state.device;
      await save();
      throw error;
    }
    await save();
  },

  async detach(ctx, state, save) {
    if (state.guestPath !== undefined) {
      await ctx.agent.unmount(state.guestPath, callOptions(ctx));
      delete state.guestPath;
      await save();
    }
    if (state.device !== undefined) {
      await ctx.vm.unplug(state.device, callOptions(ctx));
      delete state.device;
      await save();
    }
    await blockDriver.release(ctx, state, save);
  },

  async release(_ctx, state, save) {
    delete state.guestPath;
    delete state.device;
    if (state.madeFile !== undefined) {
      await fs.rm(state.madeFile, { force: true });
      delete state.madeFile;
    }
    await save();
  },
};
