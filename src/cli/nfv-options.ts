/**
 * The volume and NFV options of `vmpod run`: `-v HOST:GUEST[:ro]`, `--hugepages`,
 * `--guest-hugepages N`, `--device PCI_ADDR`, turned into sandbox config and container mounts.
 */
import path from 'node:path';
import type { SandboxConfig } from '../sandbox/config.js';
import type { ContainerVolume, VolumeSpec } from '../volume/spec.js';
import * as validate from '../validate.js';
import { integerOption } from './args.js';
import { UsageError } from './io.js';
import { DEFAULT_MEMORY_MIB, GUEST_HUGEPAGE_MIB, GUEST_RESERVED_MIB, guestHugepages } from './limits.js';

/**
 * `HOST:GUEST[:ro|:rw]` as Docker's `-v` takes it; HOST is resolved against the working
 * directory, GUEST must be absolute.
 */
export function parseVolumeOption(value: string, index: number): { spec: VolumeSpec; mount: ContainerVolume } {
  const parts = value.split(':');
  let mode: string | undefined;
  if (parts.length === 3) mode = parts.pop();
  if (parts.length !== 2 || parts[0] === '' || parts[1] === '' || (mode !== undefined && mode !== 'ro' && mode !== 'rw')) {
    throw new UsageError(`--volume ${JSON.stringify(value)}: expected HOST:GUEST or HOST:GUEST:ro`);
  }
  const readOnly = mode === 'ro';
  const destination = parts[1]!;
  if (!path.isAbsolute(destination)) throw new UsageError(`--volume ${JSON.stringify(value)}: GUEST must be an absolute path`);
  const name = `v${index}`;
  return {
    spec: { kind: 'directory', name, source: path.resolve(parts[0]!), ...(readOnly ? { readOnly: true } : {}) },
    mount: { volume: name, destination, ...(readOnly ? { readOnly: true } : {}) },
  };
}

/**
 * Applies the options to `config` (whose `memoryMiB`, if the user gave one, is already set:
 * the hugepages options depend on it); returns the container's volume mounts.
 */
export function nfvOptions(o: Record<string, boolean | string | string[]>, config: SandboxConfig): ContainerVolume[] {
  const specs: VolumeSpec[] = [];
  const mounts: ContainerVolume[] = [];
  ((o['volume'] as string[] | undefined) ?? []).forEach((value, i) => {
    const { spec, mount } = parseVolumeOption(value, i);
    specs.push(spec);
    mounts.push(mount);
  });
  const memoryMiB = config.memoryMiB ?? DEFAULT_MEMORY_MIB;
  if (typeof o['guest-hugepages'] === 'string') {
    const { min, max } = guestHugepages(memoryMiB);
    if (max < min) {
      throw new UsageError(`--guest-hugepages: the guest must keep ${GUEST_RESERVED_MIB} MiB of its RAM; with --memory ${memoryMiB} there is no room for hugepages`);
    }
    const pages = integerOption('--guest-hugepages', o['guest-hugepages'], min, max, `2 MiB pages; the guest keeps ${GUEST_RESERVED_MIB} MiB of --memory ${memoryMiB}`);
    specs.push({ kind: 'hugepages', name: 'hugepages', sizeMiB: pages * GUEST_HUGEPAGE_MIB });
    mounts.push({ volume: 'hugepages', destination: '/dev/hugepages' });
  }
  if (o['hugepages'] === true) {
    // Guest RAM on 2 MiB host pages: a whole number of them.
    if (memoryMiB % 2 !== 0) throw new UsageError(`--memory ${memoryMiB}: with --hugepages guest RAM must be a multiple of 2 MiB`);
    config.hugepages = { backRam: true };
  }
  const devices = (o['device'] as string[] | undefined) ?? [];
  if (devices.length > 0) config.devices = devices.map((d, i) => ({ address: validate.pciAddress(d, `--device[${i}]`) }));
  if (specs.length > 0) config.volumes = specs;
  return mounts;
}
