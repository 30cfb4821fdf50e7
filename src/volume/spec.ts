/**
 * What a volume is ({@link VolumeSpec}, one variant per kind) and how a container uses one
 * ({@link ContainerVolume}). Checked here, before any side effect.
 *
 * @module
 */
import { InvalidArgumentError } from '../errors.js';
import * as validate from '../validate.js';

/**
 * A host directory shared with the guest: through the sandbox's virtio-fs share (a bind mount
 * into the shared directory, read-only when asked: `mount --bind -o ro`, since the C virtiofsd
 * has no read-only mode), or through virtio-9p where the guest kernel has 9p.
 */
export interface DirectoryVolume {
  kind: 'directory';
  name: string;
  /** Host directory. */
  source: string;
  readOnly?: boolean;
  /**
   * Default `virtiofs`. `9p` needs a guest build whose kernel has 9p (Debian's generic kernel
   * built with `features: ['9p']`; the cloud kernel has none) and cannot be hot plugged.
   */
  transport?: 'virtiofs' | '9p';
}

/**
 * A disk: a raw or qcow2 image file or a host block device holding an ext4 filesystem, as a
 * virtio-blk device (on a PCIe root port on q35, so it can be hot plugged and unplugged),
 * found in the guest by its serial (`vol-NAME`) and mounted by the agent.
 */
export interface BlockVolume {
  kind: 'block';
  name: string;
  /** Image file or block device (`/dev/...`). */
  source: string;
  /** Default `raw`. */
  format?: 'raw' | 'qcow2';
  readOnly?: boolean;
}

/** An empty tmpfs in guest RAM, shared by the sandbox's containers, gone with the VM. */
export interface TmpfsVolume {
  kind: 'tmpfs';
  name: string;
  /** Upper bound (default: half the guest RAM, tmpfs's own default). */
  sizeMiB?: number;
}

/** A hugetlbfs of 2 MiB pages in the guest (the guest kernel reserves them at boot). */
export interface HugepagesVolume {
  kind: 'hugepages';
  name: string;
  /** Size in MiB, a multiple of 2: that many MiB of guest hugepages are reserved. */
  sizeMiB: number;
}

/** A volume of a sandbox. */
export type VolumeSpec = DirectoryVolume | BlockVolume | TmpfsVolume | HugepagesVolume;

/** A volume mounted in a container (an OCI bind mount of the volume's guest path). */
export interface ContainerVolume {
  /** Name of a volume of the sandbox. */
  volume: string;
  /** Absolute path in the container. */
  destination: string;
  /** Mount it read-only (required for a read-only volume). */
  readOnly?: boolean;
}

/** Volume names: short, since block volumes carry `vol-NAME` as their disk serial (max 20). */
const NAME = /^[a-z0-9][a-z0-9_.-]{0,15}$/u;

const KEYS: Record<VolumeSpec['kind'], Set<string>> = {
  directory: new Set(['kind', 'name', 'source', 'readOnly', 'transport']),
  block: new Set(['kind', 'name', 'source', 'format', 'readOnly']),
  tmpfs: new Set(['kind', 'name', 'sizeMiB']),
  hugepages: new Set(['kind', 'name', 'sizeMiB']),
};

/** A volume name. */
export function volumeName(value: unknown, field: string): string {
  if (typeof value !== 'string' || !NAME.test(value)) {
    throw new InvalidArgumentError(field, `${JSON.stringify(value)} is not a volume name (1-16 of [a-z0-9_.-], starting with a letter or digit)`);
  }
  return value;
}

function optionalBool(value: unknown, field: string): boolean | undefined {
  if (value !== undefined && typeof value !== 'boolean') throw new InvalidArgumentError(field, 'must be true or false');
  return value;
}

/** Checks one volume and returns a normalised copy. */
export function checkVolumeSpec(value: unknown, field: string): VolumeSpec {
  if (typeof value !== 'object' || value === null) throw new InvalidArgumentError(field, 'must be a volume');
  const v = (typeof (value as { toJSON?: unknown }).toJSON === 'function' ? (value as { toJSON(): unknown }).toJSON() : value) as Record<string, unknown>;
  const kind = v['kind'];
  if (kind !== 'directory' && kind !== 'block' && kind !== 'tmpfs' && kind !== 'hugepages') {
    throw new InvalidArgumentError(`${field}.kind`, 'must be "directory", "block", "tmpfs" or "hugepages"');
  }
  for (const key of Object.keys(v)) if (!KEYS[kind].has(key)) throw new InvalidArgumentError(`${field}.${key}`, 'unknown field');
  const name = volumeName(v['name'], `${field}.name`);
  switch (kind) {
    case 'directory': {
      const transport = v['transport'] ?? 'virtiofs';
      if (transport !== 'virtiofs' && transport !== '9p') throw new InvalidArgumentError(`${field}.transport`, 'must be "virtiofs" or "9p"');
      const spec: DirectoryVolume = { kind, name, source: validate.absolutePath(v['source'], `${field}.source`), transport };
      const ro = optionalBool(v['readOnly'], `${field}.readOnly`);
      if (ro !== undefined) spec.readOnly = ro;
      return spec;
    }
    case 'block': {
      const format = v['format'] ?? 'raw';
      if (format !== 'raw' && format !== 'qcow2') throw new InvalidArgumentError(`${field}.format`, 'must be "raw" or "qcow2"');
      const source = validate.absolutePath(v['source'], `${field}.source`);
      if (/[\x00-\x1f\x7f]/u.test(source)) throw new InvalidArgumentError(`${field}.source`, 'contains control characters');
      const spec: BlockVolume = { kind, name, source, format };
      const ro = optionalBool(v['readOnly'], `${field}.readOnly`);
      if (ro !== undefined) spec.readOnly = ro;
      return spec;
    }
    case 'tmpfs': {
      const spec: TmpfsVolume = { kind, name };
      if (v['sizeMiB'] !== undefined) spec.sizeMiB = validate.integer(v['sizeMiB'], `${field}.sizeMiB`, 1, 1024 * 1024);
      return spec;
    }
    case 'hugepages': {
      const sizeMiB = validate.integer(v['sizeMiB'], `${field}.sizeMiB`, 2, 1024 * 1024);
      if (sizeMiB % 2 !== 0) throw new InvalidArgumentError(`${field}.sizeMiB`, 'must be a multiple of 2 (the guest page size is 2 MiB)');
      return { kind, name, sizeMiB };
    }
  }
}

/** Checks a sandbox's volumes (unique names). */
export function checkVolumes(value: unknown, field = 'volumes'): VolumeSpec[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new InvalidArgumentError(field, 'must be an array of volumes');
  const specs = value.map((v, i) => checkVolumeSpec(v, `${field}[${i}]`));
  const names = new Set<string>();
  specs.forEach((s, i) => {
    if (names.has(s.name)) throw new InvalidArgumentError(`${field}[${i}].name`, `duplicate volume name "${s.name}"`);
    names.add(s.name);
  });
  return specs;
}

/** 2 MiB guest pages the hugepages volumes need. */
export function volumeHugepages(specs: readonly VolumeSpec[]): number {
  return specs.reduce((n, s) => n + (s.kind === 'hugepages' ? s.sizeMiB / 2 : 0), 0);
}

/** Checks a container's volume mounts. */
export function checkContainerVolumes(value: unknown, field = 'volumes'): ContainerVolume[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new InvalidArgumentError(field, 'must be an array');
  return value.map((m, i) => {
    const f = `${field}[${i}]`;
    if (typeof m !== 'object' || m === null) throw new InvalidArgumentError(f, 'must be an object');
    const o = m as Record<string, unknown>;
    for (const key of Object.keys(o)) if (!['volume', 'destination', 'readOnly'].includes(key)) throw new InvalidArgumentError(`${f}.${key}`, 'unknown field');
    const mount: ContainerVolume = { volume: volumeName(o['volume'], `${f}.volume`), destination: validate.absolutePath(o['destination'], `${f}.destination`) };
    const ro = optionalBool(o['readOnly'], `${f}.readOnly`);
    if (ro !== undefined) mount.readOnly = ro;
    return mount;
  });
}
