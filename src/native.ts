/**
 * The one typed declaration of the native addon (`native/addon`), and its loader.
 *
 * Everything the addon exports is declared in {@link NativeAddon}; nothing else in vmpod
 * touches the raw module. The addon is built by `npm install` (cmake-js) into
 * `build/Release/vmpod.node`; `VMPOD_ADDON` overrides the path.
 *
 * @internal
 * @module
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { AddonError } from './errors.js';

/** Must equal `kAbiVersion` in native/addon/common.h. */
const ABI_VERSION = 1;

/** The raw surface of the addon. */
export interface NativeAddon {
  readonly abiVersion: number;
}

/** Root of the installed package (the folder holding package.json). */
export const packageRoot: string = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

let loaded: NativeAddon | undefined;

/** Loads the addon once; throws {@link AddonError} with the fix when it is missing or stale. */
export function native(): NativeAddon {
  if (loaded) return loaded;
  const file = process.env['VMPOD_ADDON'] ?? path.join(packageRoot, 'build', 'Release', 'vmpod.node');
  let addon: NativeAddon;
  try {
    addon = createRequire(import.meta.url)(file) as NativeAddon;
  } catch (cause) {
    throw new AddonError(`cannot load the native addon ${file}: run "npm run build:native"`, { cause });
  }
  if (addon.abiVersion !== ABI_VERSION) {
    throw new AddonError(
      `native addon ${file} has ABI ${addon.abiVersion}, this vmpod needs ${ABI_VERSION}: run "npm run build:native"`,
    );
  }
  loaded = addon;
  return addon;
}
