/**
 * vmpod: run OCI containers inside lightweight virtual machines, for network function
 * virtualization.
 *
 * @packageDocumentation
 */
export * from './errors.js';
export { CleanupError } from './cleanup.js';
export type { CallOptions } from './options.js';
export { IdmapUnsupportedError, UserNamespaceError } from './host/tree.js';
export { CorruptStateError } from './state/store.js';
export { StillMountedError } from './state/remove.js';
export * from './devices/index.js';
export * from './network/index.js';
export * from './network/cni/index.js';
export * from './guest/index.js';
export * from './hypervisor/index.js';
export * from './sandbox/index.js';
export * from './container/index.js';
export * from './nfv/index.js';
export * from './volume/index.js';
export { AgentClosedError, AgentError, AgentProtocolError, type AgentErrorCode } from './agent/errors.js';
export type { ContainerInfo, GuestDevice } from './agent/messages.js';
