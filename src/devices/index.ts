/**
 * Host devices for NFV: hugepages, PCI discovery, VFIO binding, SR-IOV, KSM. Every function takes
 * the sysfs tree to act on (`{ sysfs }`, default `/sys`); hugepage reservations and VFIO bindings
 * also take the host lock folder (`{ lockDir }`, default `/run/lock/vmpod`, see `host-lock.ts`),
 * where their claims live too (the hugepage ledgers, the VFIO group claims).
 *
 * @module
 */
export {
  DeviceBindError,
  DeviceBusyError,
  FeatureUnavailableError,
  HostLockError,
  HugepageClaimExistsError,
  HugepageLedgerError,
  InsufficientHugepagesError,
  IommuGroupInUseError,
  IommuGroupNotViableError,
  SysfsReadbackError,
  UnsupportedHugepageSizeError,
  type HugepageClaimHolder,
  type VfioGroupHolder,
} from './errors.js';
export { Sysfs, type SysfsOptions } from './sysfs.js';
export { DEFAULT_HOST_LOCK_DIR, hostLockDir, type HostLockOptions } from './host-lock.js';
export {
  HugepageReservation,
  HugetlbfsMount,
  hugepageClaims,
  hugepagePool,
  hugepageSize,
  listHugepages,
  mountHugetlbfs,
  releaseHugepageClaim,
  releaseHugepages,
  reserveHugepages,
  type HugepageClaim,
  type HugepageClaimOptions,
  type HugepageClaimState,
  type HugepageClaimStatus,
  type HugepageNodeCounts,
  type HugepageOptions,
  type HugepagePool,
  type HugepageRelease,
  type HugepageRequest,
  type HugepageReservationRecord,
  type HugepageReserveOptions,
  type HugetlbfsOptions,
} from './hugepages.js';
export {
  hostAddresses,
  inUseReasons,
  iommuGroupDevices,
  listPciDevices,
  netdevStates,
  pciDevice,
  type AddressSource,
  type NetdevState,
  type PciDevice,
  type SriovCapability,
} from './pci.js';
export {
  VfioBinding,
  bindVfio,
  checkVfioGroup,
  releaseVfio,
  vfioDeviceAddArguments,
  vfioPciDevice,
  vfioQemuArgument,
  type VfioBindOptions,
  type VfioBindingRecord,
  type VfioDeviceRecord,
  type VfioPciDevice,
  type VfioPciDeviceOptions,
  type VfioReleaseOptions,
} from './vfio.js';
export { setNumVfs, setVf, sriovCapability, vfIndex, vfSettingsMessage, type SetNumVfsOptions, type VfSettings } from './sriov.js';
export {
  KsmConfiguration,
  configureKsm,
  ksmAvailable,
  ksmProcessStats,
  readKsm,
  restoreKsm,
  systemPageSize,
  type KsmOptions,
  type KsmProcessStats,
  type KsmSettings,
  type KsmStats,
  type KsmStatus,
} from './ksm.js';
