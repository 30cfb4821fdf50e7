/**
 * The {@link Volume} class: a storage volume for a sandbox's containers, of one of four kinds
 * (see spec.ts): a host directory (virtio-fs, or 9p), a block device or image (virtio-blk),
 * a tmpfs, or guest hugepages.
 *
 * ```ts
 * const data = Volume.directory('data', '/srv/data', { readOnly: true });
 * await using sandbox = await Sandbox.create({ volumes: [data, Volume.tmpfs('scratch', { sizeMiB: 64 })] });
 * await sandbox.start();
 * const disk = Volume.block('db', '/srv/db.qcow2', { format: 'qcow2' });
 * await sandbox.addVolume(disk);                       // hot plug into the running VM
 * const c = await sandbox.createContainer({
 *   volumes: [data.at('/data', { readOnly: true }), disk.at('/var/lib/db')],
 * });
 * ```
 *
 * @module
 */
import * as validate from '../validate.js';
import { checkVolumeSpec, type BlockVolume, type ContainerVolume, type DirectoryVolume, type VolumeSpec } from './spec.js';

/**
 * A storage volume of a sandbox, mounted by name into its containers.
 *
 * @example
 * ```ts
 * const data = Volume.directory('data', '/srv/data');          // virtio-fs, read-write
 * const scratch = Volume.tmpfs('scratch', { sizeMiB: 64 });
 * const huge = Volume.hugepages('huge', 16);                   // 8 guest pages of 2 MiB
 * await using sandbox = await Sandbox.create({ volumes: [data, scratch, huge] });
 * await sandbox.start();
 * await sandbox.run({ volumes: [data.at('/data'), scratch.at('/tmp'), huge.at('/dev/hugepages')], args: ['ls', '/data'] });
 * ```
 * More in examples/volumes.ts.
 */
export class Volume {
  /** The checked description (what the sandbox config and record hold). */
  readonly spec: VolumeSpec;

  /** A volume from a description (checked: {@link InvalidArgumentError} on bad input). */
  constructor(spec: VolumeSpec) {
    this.spec = checkVolumeSpec(spec, 'volume');
  }

  /**
   * A host directory. Equivalent: `mount --bind [-o ro] SOURCE SHARED/volumes/NAME` into the
   * sandbox's virtio-fs share. With `transport: '9p'` (sandbox config only, and a guest build
   * with 9p: see docs/volumes.md): `-fsdev local,path=SOURCE[,readonly=on] -device
   * virtio-9p-pci,mount_tag=vol-NAME`, then in the guest `mount -t 9p -o trans=virtio vol-NAME DIR`.
   */
  static directory(name: string, source: string, options: { readOnly?: boolean; transport?: 'virtiofs' | '9p' } = {}): Volume {
    const spec: DirectoryVolume = { kind: 'directory', name, source, ...options };
    return new Volume(spec);
  }

  /**
   * An ext4 filesystem in a raw/qcow2 image or on a block device. Equivalent: `-blockdev
   * driver=file,filename=SOURCE -blockdev driver=FORMAT -device virtio-blk-pci,serial=vol-NAME`.
   */
  static block(name: string, source: string, options: { format?: 'raw' | 'qcow2'; readOnly?: boolean } = {}): Volume {
    const spec: BlockVolume = { kind: 'block', name, source, ...options };
    return new Volume(spec);
  }

  /** A tmpfs in guest RAM. Equivalent (in the guest): `mount -t tmpfs -o size=NM tmpfs DIR`. */
  static tmpfs(name: string, options: { sizeMiB?: number } = {}): Volume {
    return new Volume({ kind: 'tmpfs', name, ...options });
  }

  /** Guest hugepages. Equivalent (in the guest): `mount -t hugetlbfs -o pagesize=2M,size=NM nodev DIR`. */
  static hugepages(name: string, sizeMiB: number): Volume {
    return new Volume({ kind: 'hugepages', name, sizeMiB });
  }

  get name(): string {
    return this.spec.name;
  }

  get kind(): VolumeSpec['kind'] {
    return this.spec.kind;
  }

  /** A mount of this volume for `createContainer({ volumes })`. */
  at(destination: string, options: { readOnly?: boolean } = {}): ContainerVolume {
    return { volume: this.name, destination: validate.absolutePath(destination, 'destination'), ...options };
  }

  toJSON(): VolumeSpec {
    return this.spec;
  }
}
