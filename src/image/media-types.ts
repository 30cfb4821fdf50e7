/**
 * The media types of OCI and Docker (schema 2) images that vmpod reads, and what each one is:
 * an index (a list of manifests), a manifest, a config, or a layer with its compression.
 *
 * @module
 */

export const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
export const OCI_LAYOUT_FILE = 'oci-layout';
export const DOCKER_MANIFEST_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';
export const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
export const DOCKER_CONFIG = 'application/vnd.docker.container.image.v1+json';

/** How a layer blob is compressed. */
export type LayerCompression = 'none' | 'gzip' | 'zstd';

const LAYERS: ReadonlyMap<string, LayerCompression> = new Map([
  ['application/vnd.oci.image.layer.v1.tar', 'none'],
  ['application/vnd.oci.image.layer.v1.tar+gzip', 'gzip'],
  ['application/vnd.oci.image.layer.v1.tar+zstd', 'zstd'],
  ['application/vnd.oci.image.layer.nondistributable.v1.tar', 'none'],
  ['application/vnd.oci.image.layer.nondistributable.v1.tar+gzip', 'gzip'],
  ['application/vnd.oci.image.layer.nondistributable.v1.tar+zstd', 'zstd'],
  ['application/vnd.docker.image.rootfs.diff.tar', 'none'],
  ['application/vnd.docker.image.rootfs.diff.tar.gzip', 'gzip'],
  ['application/vnd.docker.image.rootfs.foreign.diff.tar.gzip', 'gzip'],
  ['application/vnd.docker.image.rootfs.diff.tar.zstd', 'zstd'],
]);

/** What a descriptor's media type names. */
export type MediaKind = 'index' | 'manifest' | 'config' | 'layer';

/** The kind of `mediaType`, or undefined for one vmpod does not read. */
export function mediaKind(mediaType: string): MediaKind | undefined {
  if (mediaType === OCI_INDEX || mediaType === DOCKER_MANIFEST_LIST) return 'index';
  if (mediaType === OCI_MANIFEST || mediaType === DOCKER_MANIFEST) return 'manifest';
  if (mediaType === OCI_CONFIG || mediaType === DOCKER_CONFIG) return 'config';
  if (LAYERS.has(mediaType)) return 'layer';
  return undefined;
}

/** The compression of a layer media type, or undefined when it is no layer type vmpod reads. */
export function layerCompression(mediaType: string): LayerCompression | undefined {
  return LAYERS.get(mediaType);
}

/** The compression of a blob told by its first bytes (gzip 1f 8b, zstd 28 b5 2f fd), for Docker archives whose layers carry no media type. */
export function sniffCompression(head: Uint8Array): LayerCompression {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) return 'zstd';
  return 'none';
}
