/**
 * An image source: one image (one manifest) of an OCI layout, an OCI archive or a Docker
 * archive, resolved from a reference, with its config parsed and checked and its layers listed.
 * The image store (and the `Image` class) are built on it; nothing here writes to disk.
 *
 * Every blob is verified: the manifest and the config against their digests before they are
 * parsed, each layer against its blob digest, its size and its diff_id while it streams.
 *
 * @module
 */
import type { Readable } from 'node:stream';
import type { ImageReference } from './reference.js';
import type { LayerCompression } from './media-types.js';
import type { ImageConfig } from './config.js';

/** One layer of an image, in the order it is applied (the first is the base). */
export interface ImageLayer {
  /** Position in the manifest's `layers` (0 is the base). */
  index: number;
  /**
   * The blob's digest (over its bytes as stored: compressed when the layer is), e.g.
   * `sha256:…`. Undefined for a Docker archive's `<id>/layer.tar` that is compressed: the format
   * names no digest for it, and only its diff_id is checked. (An uncompressed one's digest is its
   * diff_id.)
   */
  digest: string | undefined;
  /** The blob's size in bytes as stored; more or fewer bytes are an error. */
  size: number;
  /** The descriptor's media type (a Docker archive's layers get the Docker tar type). */
  mediaType: string;
  /** How the blob is compressed. */
  compression: LayerCompression;
  /** The digest of the uncompressed tar (the config's `rootfs.diff_ids[index]`): the layer's identity. */
  diffId: string;
}

/** Options of {@link ImageSource.openLayer}. */
export interface OpenLayerOptions {
  /** Aborting destroys the stream with vmpod's AbortError. */
  signal?: AbortSignal;
}

/** An opened image: what was resolved from a reference, and its layers to read. */
export interface ImageSource extends AsyncDisposable {
  /** The reference it was opened from. */
  readonly reference: ImageReference;
  /**
   * The digest of the manifest picked (through any indexes), e.g. `sha256:…`. Undefined for a
   * Docker archive, which holds no manifest blob (its manifest.json is a list of its own format).
   */
  readonly manifestDigest: string | undefined;
  /** The manifest's media type (OCI or Docker schema 2); undefined for a Docker archive. */
  readonly manifestMediaType: string | undefined;
  /** The manifest's annotations (empty when it has none). */
  readonly annotations: Readonly<Record<string, string>>;
  /** The config's digest: the image's id, as `docker images --no-trunc` and podman show it. */
  readonly configDigest: string;
  /** The image config, parsed and checked (architecture, os, config, rootfs.diff_ids). */
  readonly config: ImageConfig;
  /** The layers, base first; `layers[i].diffId === config.rootfs.diff_ids[i]`. */
  readonly layers: readonly ImageLayer[];
  /**
   * Opens layer `index` as a stream of its UNCOMPRESSED tar. While it streams, the blob's size
   * and digest (over the stored bytes) and the diff_id (over the uncompressed bytes) are computed;
   * a mismatch destroys the stream with DigestMismatchError (a wrong size or a corrupt compressed
   * stream with InvalidImageError) when the blob ends, so the stream never ends cleanly with bytes
   * that do not match. Bytes read before the error are UNTRUSTED: a consumer (the unpacker) must
   * treat everything it made from this stream as garbage unless the stream ended without error
   * (apply into a staging directory and keep it only after `end`).
   */
  openLayer(index: number, options?: OpenLayerOptions): Readable;
  /** Closes the files it holds open (an archive's fd). Idempotent. */
  close(): Promise<void>;
}
