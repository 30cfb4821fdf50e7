/**
 * Guest assets: what a sandbox boots (kernel, initramfs with busybox, modules, agent and the
 * builtin rootfs), how they are built and how they are checked before a boot.
 *
 * @module
 */
export * from './assets.js';
export { BUILDER_VERSION, REQUIRED_KERNEL_CONFIG, buildGuestAssets, checkGuestExecutable, rebuildOptions } from './build.js';
export type { BuildGuestAssetsOptions, GuestBuildProgress, GuestBuildResult } from './build.js';
export { writeCpio, type CpioEntry } from './cpio.js';
export { GUEST_FEATURES, featureModules, guestFeatures, type GuestFeature } from './features.js';
export { CommandError, GuestAssetsError, GuestBuildError, type GuestBuildStep } from './errors.js';
export { GUEST_AGENT_PATH, GUEST_ROOTFS_PATH, INIT_MARKER, renderInit } from './init.js';
export { DEFAULT_KERNEL_PACKAGE, locateBzImagePayload, resolveKernelPackage, type KernelPackage } from './kernel.js';
export { DEFAULT_GUEST_MODULES, parseModuleIndex, resolveModules } from './modules.js';
