/**
 * Errors of the host device layer (hugepages, PCI/VFIO/SR-IOV, KSM). Each names what is wrong
 * and, where there is one, the fix. All extend {@link VmpodError}.
 *
 * @module
 */
import { SystemError, VmpodError, type VmpodErrorOptions } from '../errors.js';

/** The host kernel lacks a feature the call needs (a driver, a sysfs interface). */
export class FeatureUnavailableError extends VmpodError {
  constructor(
    /** What is missing, e.g. `vfio-pci driver`. */
    readonly feature: string,
    message: string,
    options: VmpodErrorOptions = {},
  ) {
    super('ERR_VMPOD_FEATURE_UNAVAILABLE', message, options);
  }
}

/** A hugepage size the host does not offer (no `hugepages-<size>kB` directory in sysfs). */
export class UnsupportedHugepageSizeError extends VmpodError {
  constructor(
    /** The requested size in bytes. */
    readonly sizeBytes: number,
    /** The sizes the host offers, in bytes. */
    readonly supported: readonly number[],
    options: VmpodErrorOptions = {},
  ) {
    super(
      'ERR_VMPOD_HUGEPAGE_SIZE_UNSUPPORTED',
      `this host has no ${formatBytes(sizeBytes)} hugepages (supported: ${supported.map(formatBytes).join(', ') || 'none'})`,
      options,
    );
  }
}

/**
 * Fewer hugepages than asked could be obtained. `attempted` is false when the request was refused
 * up front (it exceeds the memory of the node); otherwise the kernel gave `obtained` of
 * `requested` pages and, when `rolledBack` is true, the pool was put back to `previous`. When it
 * is false, the pages left are held by the hugepage claim `claimId` in the ledger: release them
 * with `releaseHugepageClaim(claimId)`.
 */
export class InsufficientHugepagesError extends VmpodError {
  /** The ledger claim holding the pages a failed roll-back left (only when `rolledBack` is false). */
  readonly claimId: string | undefined;

  constructor(
    readonly sizeBytes: number,
    /** NUMA node, or undefined for the global pool. */
    readonly node: number | undefined,
    /** Pool size before the call. */
    readonly previous: number,
    /** Pool size asked for. */
    readonly requested: number,
    /** Pool size read back after the write (equals `previous` when not attempted). */
    readonly obtained: number,
    readonly attempted: boolean,
    readonly rolledBack: boolean,
    options: VmpodErrorOptions & { claimId?: string | undefined } = {},
  ) {
    const where = node === undefined ? 'the host' : `NUMA node ${node}`;
    const what = `${requested - previous} more ${formatBytes(sizeBytes)} hugepages on ${where} (pool ${previous} -> ${requested})`;
    const held = options.claimId === undefined ? '' : `, its pages held by hugepage claim ${options.claimId} (releaseHugepageClaim)`;
    super(
      'ERR_VMPOD_HUGEPAGES_INSUFFICIENT',
      attempted
        ? `asked for ${what}, the kernel gave ${obtained - previous}; ` +
            (rolledBack ? `the pool was put back to ${previous}` : `the pool is left at ${obtained}${held}`) +
            ' (free memory is fragmented or short: reserve hugepages at boot, e.g. hugepages=N on the kernel command line)'
        : `asked for ${what}, which exceeds the memory of ${where}; nothing was changed`,
      options,
    );
    this.claimId = options.claimId;
  }
}

/** A device (or a member of its IOMMU group) is in use on the host and `force` was not given. */
export class DeviceBusyError extends VmpodError {
  constructor(
    readonly address: string,
    /** Why it is considered in use, e.g. `netdev ens1f1 is up`. */
    readonly reasons: readonly string[],
    options: VmpodErrorOptions = {},
  ) {
    super(
      'ERR_VMPOD_DEVICE_BUSY',
      `PCI device ${address} is in use on the host: ${reasons.join('; ')} (bring it down and remove its addresses, or pass force)`,
      options,
    );
  }
}

/** The IOMMU group of a device cannot be handed to a VM as a whole. */
export class IommuGroupNotViableError extends VmpodError {
  constructor(
    readonly address: string,
    /** The IOMMU group number, or undefined when the device has none. */
    readonly group: number | undefined,
    readonly reason: string,
    options: VmpodErrorOptions = {},
  ) {
    super(
      'ERR_VMPOD_IOMMU_GROUP_NOT_VIABLE',
      group === undefined
        ? `PCI device ${address} has no IOMMU group: ${reason}`
        : `IOMMU group ${group} of PCI device ${address} cannot be split: ${reason}`,
      options,
    );
  }
}

/**
 * Binding a device (group) to, or restoring it from, vfio-pci failed. `restored` tells whether every
 * device was put back on its original driver; `failures` lists what could not be restored.
 */
export class DeviceBindError extends VmpodError {
  constructor(
    readonly address: string,
    message: string,
    readonly restored: boolean,
    readonly failures: readonly string[] = [],
    options: VmpodErrorOptions = {},
  ) {
    super('ERR_VMPOD_DEVICE_BIND', message, options);
  }
}

/** Wraps a Node fs error (negative errno, `code`) into a {@link SystemError}. */
export function systemErrorFrom(syscall: string, cause: unknown): SystemError {
  const e = cause as NodeJS.ErrnoException;
  const errnoName = typeof e?.code === 'string' ? e.code : 'EUNKNOWN';
  const errno = typeof e?.errno === 'number' ? Math.abs(e.errno) : 0;
  const message = e instanceof Error ? e.message.replace(/^[A-Z0-9]+: /u, '').replace(/, [a-z]+ '.*'$/u, '') : String(cause);
  return new SystemError(syscall, errno, errnoName, message, { cause });
}

/** `2097152` -> `2 MiB`. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && value % 1024 === 0 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value} ${units[unit]}`;
}

/** A value written to sysfs did not read back as written (the kernel applied it partly or not at all). */
export class SysfsReadbackError extends VmpodError {
  constructor(
    /** Absolute path of the attribute. */
    readonly path: string,
    readonly written: string,
    readonly readBack: string,
    options: VmpodErrorOptions = {},
  ) {
    super('ERR_VMPOD_SYSFS_READBACK', `wrote ${JSON.stringify(written)} to ${path} but read back ${JSON.stringify(readBack)}`, options);
  }
}

/**
 * The folder of the host-wide locks cannot be used safely: it is not a directory, belongs to
 * another user, or others can write to it (they could then hold vmpod's locks or plant files).
 */
export class HostLockError extends VmpodError {
  constructor(
    /** The lock folder. */
    readonly path: string,
    /** What is wrong with it. */
    readonly reason: string,
    options: VmpodErrorOptions = {},
  ) {
    super('ERR_VMPOD_HOST_LOCK', `cannot use ${path} for vmpod's host locks: ${reason}`, options);
  }
}

/** Who holds an IOMMU group, as its claim says (see `bindVfio`). */
export interface VfioGroupHolder {
  /** The `owner` the holder gave (a sandbox id, say), or `pid N` when it gave none. */
  owner: string;
  /** The process that bound the group (it may have exited since: the binding outlives it). */
  pid: number;
  /** When the group was bound (ISO 8601). */
  since: string;
  /** The device the holder asked for. */
  address: string;
  claimId: string;
}

/**
 * The IOMMU group of a device is already bound to vfio-pci for another binding (another sandbox,
 * or a binding that was never released): a group goes to one VM at a time.
 */
export class IommuGroupInUseError extends VmpodError {
  constructor(
    readonly address: string,
    readonly group: number,
    /** The holder, as its claim says; undefined when the claim could not be read. */
    readonly holder: VfioGroupHolder | undefined,
    /** The claim file (remove it only if its holder is gone for good). */
    readonly claimPath: string,
    options: VmpodErrorOptions = {},
  ) {
    const who =
      holder === undefined
        ? 'a binding whose claim cannot be read'
        : `${holder.owner} (pid ${holder.pid}, since ${holder.since}, for ${holder.address})`;
    super(
      'ERR_VMPOD_IOMMU_GROUP_IN_USE',
      `IOMMU group ${group} of PCI device ${address} is bound to vfio-pci for ${who}: a group goes to one VM at a time ` +
        `(release it there first; if that holder is gone for good, release its record or remove ${claimPath})`,
      options,
    );
  }
}

/**
 * The ledger of a hugepage size (`hugepages-<kB>kB.json` next to its host lock, see
 * `reserveHugepages`) cannot be read or written: nothing was written to `nr_hugepages` after the
 * failure was seen. A ledger that cannot be parsed stops every reservation and release of that
 * size rather than guess which pages belong to whom.
 */
export class HugepageLedgerError extends VmpodError {
  constructor(
    /** The ledger file. */
    readonly path: string,
    /** What is wrong. */
    readonly reason: string,
    options: VmpodErrorOptions = {},
  ) {
    super('ERR_VMPOD_HUGEPAGE_LEDGER', `hugepage ledger ${path}: ${reason}`, options);
  }
}

/** The holder of a hugepage claim, as the ledger says (see `hugepageClaims`). */
export interface HugepageClaimHolder {
  /** The `owner` given to `reserveHugepages` (a sandbox id, say), or `pid N`. */
  owner: string;
  /** The process that made the reservation (it may have exited since: the claim outlives it). */
  pid: number;
  /** When the reservation was made (ISO 8601). */
  since: string;
  /** `writing`, `held` or `releasing`. */
  state: string;
  /** Pages the claim holds (0 while `writing`). */
  added: number;
}

/**
 * A reservation was given a claim id (`claimId`) that the ledger already holds: a reservation made
 * with it earlier was not released. Nothing was written. Release that claim first
 * (`releaseHugepageClaim`), or use a new id.
 */
export class HugepageClaimExistsError extends VmpodError {
  constructor(
    readonly claimId: string,
    readonly holder: HugepageClaimHolder,
    /** The ledger file. */
    readonly ledgerPath: string,
    options: VmpodErrorOptions = {},
  ) {
    super(
      'ERR_VMPOD_HUGEPAGE_CLAIM_EXISTS',
      `hugepage claim ${claimId} is already in ${ledgerPath}: ${holder.owner} (pid ${holder.pid}, since ${holder.since}) ` +
        `holds ${holder.added} pages with it (${holder.state}); release it first (releaseHugepageClaim) or use another claim id`,
      options,
    );
  }
}
