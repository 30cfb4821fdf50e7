/**
 * OCI images: references, sources (layouts and archives), configs, and their errors.
 *
 * @module
 */
export * from './errors.js';
export { parseImageReference, formatImageReference, normalizeDockerName, isRefName } from './reference.js';
export type { ImageReference, ImageTransport } from './reference.js';
export type { LayerCompression, MediaKind } from './media-types.js';
export type { ImageSource, ImageLayer, OpenLayerOptions } from './source.js';
export { openImageSource } from './open.js';
export type { OpenImageSourceOptions } from './open.js';
export { imageRuntimeSpec, imageAnnotations, resolveUser, parsePasswd, parseGroup } from './runtime-spec.js';
export type { RuntimeSpecOverrides, RuntimeSpecOptions, ResolvedUser } from './runtime-spec.js';
export type { ImageConfig, ImageExecConfig } from './config.js';
export { readFileInRoot } from './in-root.js';
export { applyLayer, normaliseEntryName } from './unpack.js';
export type { ApplyLayerOptions, LayerCounts, LayerLimits, LayerMode } from './unpack.js';
export { Image } from './image.js';
export type { ImageOpenOptions, ImageLayerInfo, StoreOptions, UnpackProgress, UnpackResult } from './image.js';
export { DEFAULT_IMAGE_STORE, chainId } from './store.js';
export type { ImageRecord, LayerRecord } from './store.js';
