/**
 * Sandboxes: VMs that run containers.
 *
 * @module
 */
export { Sandbox, SandboxError } from './sandbox.js';
export type { ContainerConfig, LookupOptions, SandboxCallOptions, SandboxEvents, SandboxInfo, StopInfo } from './sandbox.js';
export { resolveSandboxConfig, type GuestConfig, type ResolvedSandboxConfig, type SandboxConfig, type SharedFsCache } from './config.js';
export type { InitStdioOptions, StdioTransport } from './stream-ports.js';
export { isValidContainerTransition, isValidSandboxTransition, type ContainerState, type SandboxState } from './state-machine.js';
