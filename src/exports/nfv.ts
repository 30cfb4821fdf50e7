/**
 * `vmpod/nfv`: the NFV data paths of sandboxes. The config of guest RAM on hugepages, vhost-user
 * NICs and PCI passthrough (part of a sandbox's config), what a sandbox reports of its NFV
 * devices, and the KSM report across sandboxes. The host side of these devices (hugepage pools,
 * VFIO, SR-IOV, KSM settings) is `vmpod/devices`. See docs/vhost-user.md and docs/sriov-vfio.md.
 *
 * @module vmpod/nfv
 */
export * from '../nfv/index.js';
export type { PciDeviceInfo, VhostUserNicInfo } from '../sandbox/index.js';
