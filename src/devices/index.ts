/**
 * Host devices for NFV: hugepages, PCI discovery, VFIO binding, SR-IOV, KSM. Every function takes
 * the sysfs tree to act on (`{ sysfs }`, default `/sys`).
 *
 * @module
 */
export {
  DeviceBindError,
  DeviceBusyError,
  FeatureUnavailableError,
  InsufficientHugepagesError,
  IommuGroupNotViableError,
  SysfsReadbackError,
  UnsupportedHugepageSizeError,
} from './errors.js';
export { Sysfs, type SysfsOptions } from './sysfs.js';
export {
  HugepageReservation,
  HugetlbfsMount,
  hugepagePool,
  hugepageSize,
  listHugepages,
  mountHugetlbfs,
  releaseHugepages,
  reserveHugepages,
  type HugepageNodeCounts,
  type HugepagePool,
  type HugepageRequest,
  type HugepageReservationRecord,
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
