/**
 * NFV data paths of sandboxes: guest RAM on hugepages, vhost-user NICs, PCI passthrough with
 * VFIO, KSM. Devices are added to a running sandbox with its `addVhostUserNic` and
 * `addPciDevice`.
 *
 * @module
 */
export type { NfvConfigInput, PciPassthrough, SandboxHugepages, VhostUserNic } from './config.js';
export { VhostUserSocketError } from './errors.js';
export { ksmReport, type KsmReport } from './ksm.js';
