/**
 * NFV data paths of sandboxes: guest RAM on hugepages, vhost-user NICs, PCI passthrough with
 * VFIO, KSM.
 *
 * @module
 */
export type { NfvConfigInput, PciPassthrough, SandboxHugepages, VhostUserNic } from './config.js';
export { VhostUserSocketError } from './errors.js';
export type { VhostUserNicInfo } from './vhost-user.js';
export type { PciDeviceInfo } from './pci-devices.js';
export {
  hotplugPciDevice,
  hotplugVhostUserNic,
  ksmReport,
  sandboxNfvDevices,
  unplugPciDevice,
  unplugVhostUserNic,
  type KsmReport,
  type NfvCallOptions,
  type NfvHost,
  type SandboxNfvDevices,
} from './api.js';
