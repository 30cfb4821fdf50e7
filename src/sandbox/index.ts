/**
 * Sandboxes: VMs that run containers.
 *
 * @module
 */
export { Sandbox, SandboxError } from './sandbox.js';
export type { ContainerConfig } from './containers.js';
export type { LookupOptions, SandboxCallOptions, SandboxDevices, SandboxEvents, SandboxInfo, StopInfo, VolumeInfo } from './types.js';
export { MAX_MEMORY_MIB, MIN_MEMORY_MIB, resolveSandboxConfig, type GuestConfig, type ResolvedSandboxConfig, type SandboxConfig, type SharedFsCache } from './config.js';
export type { InitStdioOptions, StdioTransport } from './containers.js';
export { SupersededError } from './record.js';
export { isValidContainerTransition, isValidSandboxTransition, type ContainerState, type SandboxState } from './state-machine.js';
export { planEndpoints, type AddNetworkOptions, type RescanResult, type SandboxInterfaceInfo } from './resources/network.js';
export type { VhostUserNicInfo } from './resources/vhost-user.js';
export type { PciDeviceInfo } from './resources/pci-devices.js';
export { RootfsImageError } from './resources/volumes/container.js';
export { SandboxWatcher, WatchOverflowError, type ContainerEvent, type DeviceEvent, type SandboxStateEvent, type SandboxWatcherEvents, type WatchErrorEvent, type WatchEvent, type WatchOptions } from './watch.js';
export { abortOnSignals, InterruptedError, type AbortOnSignalsOptions } from '../signals.js';
export type { RunEncoding, RunOptions, RunOutput, RunResult, RunSpec } from './run.js';
export type { ContainerInspection, InspectedProcess, SandboxInspection } from './inspect.js';
