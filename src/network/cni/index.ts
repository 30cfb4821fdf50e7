/**
 * CNI in vmpod: a TypeScript equivalent of libcni. Load network configurations
 * ({@link CniConfig}), run their plugin chains ({@link CniRuntime}), read typed results
 * ({@link CniResult}). See docs/cni.md.
 *
 * @module
 */
export { CniConfig, isNetworkName, isPluginType, type CniPluginConfig, type JsonObject } from './config.js';
export {
  CniRuntime,
  DEFAULT_CACHE_DIR,
  DEFAULT_MAX_OUTPUT_BYTES,
  DEFAULT_PLUGIN_DIRS,
  DEFAULT_TIMEOUT_MS,
  type CniCallOptions,
  type CniGcOptions,
  type CniRuntimeOptions,
  type CniVersionInfo,
} from './runtime.js';
export { assertUniqueInterfaceNames, type CniAttachment } from './attachment.js';
export type { CniCachedAttachment } from './cache.js';
export type { CniDns, CniInterface, CniIpConfig, CniResult, CniRoute } from './result.js';
export {
  CniAttachmentExistsError,
  CniCacheError,
  CniConfigError,
  CniExecError,
  CniGcError,
  CniOutputError,
  CniPluginError,
  CniPluginNotFoundError,
  CniVersionError,
  WELL_KNOWN_CNI_CODES,
  rollbackErrorOf,
  type CniCommand,
  type CniConfigLocation,
  type CniInvocation,
} from './errors.js';
export { CURRENT_VERSION, SUPPORTED_VERSIONS, compareVersions } from './version.js';
