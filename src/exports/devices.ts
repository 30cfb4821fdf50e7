/**
 * `vmpod/devices`: host devices for NFV. Hugepage pools, reservations and hugetlbfs mounts; PCI
 * discovery; VFIO binding; SR-IOV virtual functions; KSM. Every function takes the sysfs tree to
 * act on (`{ sysfs }`, default `/sys`); reservations and bindings also take the host lock folder
 * (`{ lockDir }`, default `/run/lock/vmpod`). See docs/hugepages.md, docs/sriov-vfio.md and
 * docs/ksm.md.
 *
 * @module vmpod/devices
 */
export * from '../devices/index.js';
