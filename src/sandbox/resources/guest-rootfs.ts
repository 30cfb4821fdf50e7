/**
 * A user's rootfs image in place of the builtin busybox rootfs (`guest.rootfsImage`): an ext4
 * filesystem in a raw or qcow2 file, or on a host block device, attached read-only as a
 * virtio-blk disk (serial `vmpod-rootfs`) and mounted read-only by the agent. Containers made
 * without a bundle or rootfs directory then get a copy-on-write rootfs over it (an overlay
 * with an upper layer of their own in the guest), as they would over the builtin one. The disk
 * is read-only, so one image can serve many sandboxes at once.
 *
 * QEMU equivalent: `-blockdev driver=file,filename=IMG,read-only=on -blockdev
 * driver=raw|qcow2,... -device virtio-blk-pci,serial=vmpod-rootfs`, then in the guest
 * `mount -t ext4 -o ro /dev/vdX DIR`.
 *
 * @internal
 * @module
 */
import fs from 'node:fs/promises';
import { InvalidArgumentError, NotFoundError } from '../../errors.js';
import type { GuestContext, ResourceContext, SandboxResource, VmContribution } from './resource.js';

/** Nothing is recorded: the disk goes with the VM. */
type NoState = Record<string, never>;

/** The disk's serial and VM device id. */
export const ROOTFS_IMAGE_SERIAL = 'vmpod-rootfs';

/** Where the agent mounts the image in the guest. */
export function guestRootfsImageDir(guestStateDir: string): string {
  return `${guestStateDir}/rootfs-image`;
}

/** Checks the image and tells its format from its first bytes (qcow2 starts with `QFI\xfb`). */
export async function rootfsImageFormat(image: string): Promise<'raw' | 'qcow2'> {
  const stat = await fs.stat(image).catch(() => undefined);
  if (!stat) throw new NotFoundError('guest.rootfsImage', image);
  if (!stat.isFile() && !stat.isBlockDevice()) {
    throw new InvalidArgumentError('guest.rootfsImage', `${image} is neither a regular file nor a block device`);
  }
  const file = await fs.open(image, 'r');
  try {
    const { buffer, bytesRead } = await file.read(Buffer.alloc(4), 0, 4, 0);
    return bytesRead === 4 && buffer.equals(Buffer.from([0x51, 0x46, 0x49, 0xfb])) ? 'qcow2' : 'raw';
  } finally {
    await file.close();
  }
}

export class GuestRootfsResource implements SandboxResource<NoState> {
  readonly kind = 'guestRootfs';

  parse(): NoState {
    return {};
  }

  async prepare(ctx: ResourceContext<NoState>): Promise<VmContribution> {
    const image = ctx.config.guest.rootfsImage!;
    const format = await rootfsImageFormat(image);
    return {
      devices: [
        {
          kind: 'virtio-blk',
          id: ROOTFS_IMAGE_SERIAL,
          path: image,
          format,
          serial: ROOTFS_IMAGE_SERIAL,
          readOnly: true,
          ...(ctx.config.machine === 'q35' ? { rootPort: true } : {}),
        },
      ],
    };
  }

  async attach(ctx: GuestContext<NoState>): Promise<void> {
    if (!ctx.agent.info.features.includes('rootfs-overlay')) {
      throw new InvalidArgumentError('guest.rootfsImage', "the guest's agent is too old for a rootfs image (no rootfs-overlay feature): rebuild the guest or its initramfs");
    }
    await ctx.agent.mount(
      { type: 'ext4', device: { serial: ROOTFS_IMAGE_SERIAL }, target: guestRootfsImageDir(ctx.guestStateDir), readOnly: true, timeoutMs: 30_000 },
      ctx.signal ? { signal: ctx.signal } : {},
    );
  }

  /** Nothing on the host: the disk goes with the VM. */
  async release(): Promise<void> {}
}
