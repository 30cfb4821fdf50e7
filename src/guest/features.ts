/**
 * What a guest build can do that depends on its kernel: which shared-filesystem transports its
 * guest can mount, decided from facts (the kernel config and the modules /init loads), recorded
 * in the manifest (`features`) and read back before a sandbox asks for them.
 *
 * A kernel option counts when it is built in (`=y`), or a module (`=m`) that /init loads.
 *
 * @module
 */
import { GuestBuildError } from './errors.js';
import { moduleName } from './modules.js';

/** A guest capability vmpod can ask for: `virtiofs` and `9p` shares. */
export type GuestFeature = 'virtiofs' | '9p';

/** Every {@link GuestFeature}. */
export const GUEST_FEATURES: readonly GuestFeature[] = ['virtiofs', '9p'];

/** The kernel options of each feature, and the module of each option when it is `=m`. */
const NEEDS: Readonly<Record<GuestFeature, readonly (readonly [option: string, module: string])[]>> = {
  virtiofs: [
    ['CONFIG_FUSE_FS', 'fuse'],
    ['CONFIG_VIRTIO_FS', 'virtiofs'],
  ],
  '9p': [
    ['CONFIG_NET_9P', '9pnet'],
    ['CONFIG_NET_9P_VIRTIO', '9pnet_virtio'],
    ['CONFIG_9P_FS', '9p'],
  ],
};

/**
 * The modules to load so that the kernel has `feature` (nothing for options built in). Throws
 * {@link GuestBuildError} naming the missing options when the kernel has them neither way.
 */
export function featureModules(feature: GuestFeature, config: ReadonlyMap<string, string>, kernelRelease: string): string[] {
  const missing = NEEDS[feature].filter(([option]) => config.get(option) !== 'y' && config.get(option) !== 'm').map(([option]) => option);
  if (missing.length > 0) {
    const hint = feature === '9p' ? ` (Debian's cloud kernel has no 9p: build with kernelPackage "linux-image-amd64")` : '';
    throw new GuestBuildError('modules', `kernel ${kernelRelease} cannot provide ${feature}: ${missing.join(', ')} ${missing.length > 1 ? 'are' : 'is'} not set${hint}`);
  }
  return NEEDS[feature].filter(([option]) => config.get(option) === 'm').map(([, module]) => module);
}

/**
 * The features a build provides: those whose kernel options are each built in, or a module in
 * `loaded` (module paths or names, as the manifest's `modules.load` lists them).
 */
export function guestFeatures(config: ReadonlyMap<string, string>, loaded: readonly string[]): GuestFeature[] {
  const names = new Set(loaded.map(moduleName));
  return GUEST_FEATURES.filter((feature) =>
    NEEDS[feature].every(([option, module]) => config.get(option) === 'y' || (config.get(option) === 'm' && names.has(module))),
  );
}
