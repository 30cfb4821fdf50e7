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
import type { VirtioBlkDevice } from '../../../hypervisor/hypervisor.js';
import type { BlockVolume } from '../../../volume/spec.js';
import { callOptions, type GuestContext } from '../resource.js';
import { guestVolumeDir, type VolumeDriver, type VolumeState } from './driver.js';
import { checkHostPath } from './host-path.js';

function specOf(volume: VolumeState): BlockVolume {
  return volume.spec as BlockVolume;
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

export const blockDriver: VolumeDriver = {
  async prepareHost(ctx, volume, save, hotplug) {
    const spec = specOf(volume);
    await checkHostPath(spec.name, spec.source, 'file-or-block', spec.readOnly === true);
    volume.device = blockSerial(spec.name);
    await save();
    return hotplug ? [] : [blockDevice(spec, ctx.config.machine === 'q35')];
  },

  async attachGuest(ctx, volume, hotplug) {
    const spec = specOf(volume);
    if (hotplug) await ctx.vm.hotplug(blockDevice(spec, false), callOptions(ctx));
    const target = guestVolumeDir(ctx.guestStateDir, spec.name);
    try {
      await ctx.agent.mount(
        { type: 'ext4', device: { serial: blockSerial(spec.name) }, target, readOnly: spec.readOnly === true, timeoutMs: 30_000 },
        callOptions(ctx),
      );
    } catch (error) {
      if (hotplug) await ctx.vm.unplug(blockSerial(spec.name), callOptions(ctx)).catch(() => undefined);
      throw error;
    }
    return target;
  },

  async detachGuest(ctx: GuestContext<unknown>, volume) {
    if (volume.guestPath !== undefined) await ctx.agent.unmount(volume.guestPath, callOptions(ctx));
    if (volume.device !== undefined) await ctx.vm.unplug(volume.device, callOptions(ctx));
  },

  async releaseHost(_ctx, volume, save) {
    delete volume.guestPath;
    delete volume.device;
    if (volume.madeFile !== undefined) {
      await fs.rm(volume.madeFile, { force: true });
      delete volume.madeFile;
    }
    await save();
  },
};
