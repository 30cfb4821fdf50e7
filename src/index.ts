/**
 * vmpod: run OCI containers inside lightweight virtual machines, for network function
 * virtualization.
 *
 * `vmpod` itself exports what every script needs: {@link Sandbox}, {@link Container} and
 * {@link Process}, {@link Volume} and {@link Network}, their options, events and results, the
 * helpers around them, and vmpod's errors. The rest is grouped by subpath:
 *
 * | import from | for |
 * |---|---|
 * | `vmpod/network` | host networking (namespaces, links, routes, tc, tap), endpoints, CNI |
 * | `vmpod/devices` | hugepages, PCI, VFIO, SR-IOV, KSM on the host |
 * | `vmpod/nfv` | the NFV config of sandboxes and what they report of their NFV devices |
 * | `vmpod/guest` | the guest assets: build, resolve, verify |
 * | `vmpod/hypervisor` | the VM layer: the Hypervisor interface, QEMU, QMP, virtiofsd |
 * | `vmpod/image` | OCI image sources, layers, the image config conversion, the image store |
 *
 * An error class is exported with its domain (e.g. `VmStartError` from `vmpod/hypervisor`,
 * `CniPluginError` from `vmpod/network`); every error has a stable `code` (`ERR_VMPOD_...`) as
 * well. docs/install.md lists the subpaths.
 *
 * @module vmpod
 */
export * from './errors.js';
export { CleanupError } from './cleanup.js';
export type { CallOptions } from './options.js';
export { IdmapUnsupportedError, UserNamespaceError } from './host/tree.js';
export { CorruptStateError } from './state/store.js';
export { StillMountedError } from './state/remove.js';
// The core classes. Whatever their modules export is public here.
export * from './sandbox/index.js';
export * from './container/index.js';
export * from './volume/index.js';
// Containers from OCI images (`createContainer({ image })`); the parts below it are in vmpod/image.
export { Image, type ImageOpenOptions, type ImageLayerInfo, type StoreOptions, type UnpackProgress, type UnpackResult } from './image/image.js';
export { ImageNotFoundError, DigestMismatchError, InvalidImageError, LayerEscapeError } from './image/errors.js';
// The parts of a sandbox's config that come from other modules.
export { Network, type NetworkOptions, type NetworkOpenOptions, type NetworkEndpoint } from './network/index.js';
export type { CniNetworkSpec, InterfaceSettings, SandboxNetworkConfig } from './network/index.js';
export type { NfvConfigInput, PciPassthrough, SandboxHugepages, VhostUserNic } from './nfv/index.js';
export type { MachineProfile } from './hypervisor/index.js';
export { AgentClosedError, AgentError, AgentProtocolError, type AgentErrorCode } from './agent/errors.js';
export type { ContainerInfo, GuestDevice } from './agent/messages.js';
