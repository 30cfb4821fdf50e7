/**
 * OCI image layouts (image-spec image-layout.md), in a directory or in a tar: `oci-layout`,
 * `index.json`, and the manifest picked from them by ref name through nested indexes
 * (linux/amd64 from a multi-platform index), with its config and layers.
 *
 * @module
 */
import type { Readable } from 'node:stream';
import { ImageNotFoundError, InvalidImageError } from './errors.js';
import { blobPath, directoryStorage, isDigest, layerStream, parseJsonObject, printable, readBlob, type BlobStorage } from './blob.js';
import { checkImageConfig, MAX_LAYERS, type ImageConfig } from './config.js';
import { layerCompression, mediaKind } from './media-types.js';
import { formatImageReference, type ImageReference } from './reference.js';
import type { ImageLayer, ImageSource, OpenLayerOptions } from './source.js';

/** How deep indexes may nest (an index of indexes of ...) before the layout is refused. */
export const MAX_INDEX_DEPTH = 8;
/** Most descriptors an index (or index.json) may list. */
export const MAX_INDEX_ENTRIES = 10_000;
/** The annotation that names a manifest in a layout's index.json. */
export const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';
/** The platform picked from a multi-platform index. */
export const PLATFORM = { os: 'linux', architecture: 'amd64' } as const;

/** A content descriptor, checked. */
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations: Record<string, string>;
  platform?: { os: string; architecture: string; variant?: string };
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Checks a descriptor; `what` names it for messages. */
export function checkDescriptor(value: unknown, what: string, reference: string): Descriptor {
  const fail = (problem: string): never => {
    throw new InvalidImageError(reference, `${what}: ${problem}`);
  };
  if (!isRecord(value)) fail('must be an object');
  const v = value as Record<string, unknown>;
  if (typeof v['mediaType'] !== 'string' || v['mediaType'].length === 0) fail('"mediaType" must be a non-empty string');
  if (!isDigest(v['digest'])) fail(`"digest" ${printable(v['digest'])} is not a sha256 or sha512 digest`);
  const size = v['size'];
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) fail('"size" must be a whole number of bytes');
  const annotations: Record<string, string> = {};
  if (v['annotations'] !== undefined && v['annotations'] !== null) {
    if (!isRecord(v['annotations'])) fail('"annotations" must be an object');
    for (const [key, text] of Object.entries(v['annotations'] as Record<string, unknown>)) {
      if (typeof text !== 'string') fail(`annotation ${printable(key)} must be a string`);
      annotations[key] = text as string;
    }
  }
  const descriptor: Descriptor = { mediaType: v['mediaType'] as string, digest: v['digest'] as string, size: size as number, annotations };
  const platform = v['platform'];
  if (platform !== undefined && platform !== null) {
    if (!isRecord(platform) || typeof platform['os'] !== 'string' || typeof platform['architecture'] !== 'string') {
      fail('"platform" must have "os" and "architecture" strings');
    }
    const p = platform as Record<string, unknown>;
    descriptor.platform = { os: p['os'] as string, architecture: p['architecture'] as string };
    if (typeof p['variant'] === 'string') descriptor.platform.variant = p['variant'];
  }
  return descriptor;
}

/** The `manifests` of an index (index.json or an index blob), checked. */
function indexEntries(index: Record<string, unknown>, what: string, reference: string): Descriptor[] {
  if (index['schemaVersion'] !== 2) throw new InvalidImageError(reference, `${what}: "schemaVersion" must be 2`);
  const manifests = index['manifests'];
  if (!Array.isArray(manifests)) throw new InvalidImageError(reference, `${what}: "manifests" must be an array`);
  if (manifests.length > MAX_INDEX_ENTRIES) throw new InvalidImageError(reference, `${what}: ${manifests.length} manifests, more than the ${MAX_INDEX_ENTRIES} vmpod reads`);
  return manifests.map((m, i) => checkDescriptor(m, `${what} manifests[${i}]`, reference));
}

function describeRefs(entries: Descriptor[]): string {
  const names = entries.map((d) => d.annotations[REF_NAME_ANNOTATION]).filter((n): n is string => n !== undefined);
  return names.length > 0 ? `its refs: ${names.slice(0, 20).map((n) => printable(n)).join(', ')}` : 'none has a ref name';
}

/**
 * Picks the linux/amd64 entry of a multi-platform list; an entry without a platform is taken
 * only when it is the only one.
 */
function pickPlatform(entries: Descriptor[], what: string, reference: string): Descriptor {
  const usable = entries.filter((d) => mediaKind(d.mediaType) === 'manifest' || mediaKind(d.mediaType) === 'index');
  if (usable.length === 1 && usable[0]!.platform === undefined) return usable[0]!;
  const matching = usable.filter((d) => d.platform?.os === PLATFORM.os && d.platform.architecture === PLATFORM.architecture);
  if (matching.length === 0) {
    const platforms = usable.map((d) => (d.platform ? `${d.platform.os}/${d.platform.architecture}` : 'no platform'));
    throw new ImageNotFoundError(reference, `${what} has no ${PLATFORM.os}/${PLATFORM.architecture} manifest (it has: ${platforms.join(', ') || 'none'})`);
  }
  return matching[0]!;
}

/** What {@link resolveManifest} found: the manifest's descriptor and its parsed JSON. */
export interface ResolvedManifest {
  descriptor: Descriptor;
  manifest: Record<string, unknown>;
}

/** Reads and verifies a blob named by a descriptor, and parses it as a JSON object. */
async function readJsonBlob(storage: BlobStorage, descriptor: Descriptor, what: string, reference: string): Promise<Record<string, unknown>> {
  const bytes = await readBlob(storage, blobPath(descriptor.digest, reference), { what: `${what} ${descriptor.digest}`, reference, digest: descriptor.digest, size: descriptor.size });
  const value = parseJsonObject(bytes, `${what} ${descriptor.digest}`, reference);
  if (value['mediaType'] !== undefined && value['mediaType'] !== descriptor.mediaType) {
    throw new InvalidImageError(reference, `${what} ${descriptor.digest}: its mediaType ${printable(value['mediaType'])} is not the descriptor's ${printable(descriptor.mediaType)}`);
  }
  return value;
}

/**
 * Finds the manifest of `ref` (or the only one) in the layout of `storage`: by the ref.name
 * annotation of index.json's entries, then through nested indexes to linux/amd64, verifying
 * each index blob before it is parsed.
 */
export async function resolveManifest(storage: BlobStorage, ref: string | undefined, reference: string): Promise<ResolvedManifest> {
  const layoutFile = await readBlob(storage, 'oci-layout', { what: 'oci-layout', reference }, 4096).catch((error: unknown) => {
    throw new InvalidImageError(reference, 'is not an OCI image layout (no readable oci-layout file)', { cause: error });
  });
  const layout = parseJsonObject(layoutFile, 'oci-layout', reference);
  if (typeof layout['imageLayoutVersion'] !== 'string') throw new InvalidImageError(reference, 'oci-layout: "imageLayoutVersion" must be a string');
  const index = parseJsonObject(await readBlob(storage, 'index.json', { what: 'index.json', reference }), 'index.json', reference);
  const top = indexEntries(index, 'index.json', reference);
  let descriptor: Descriptor;
  if (ref !== undefined) {
    const named = top.filter((d) => d.annotations[REF_NAME_ANNOTATION] === ref);
    if (named.length === 0) throw new ImageNotFoundError(reference, `no manifest is named ${printable(ref)} (${describeRefs(top)})`);
    descriptor = named.length === 1 ? named[0]! : pickPlatform(named, `index.json (ref ${printable(ref)})`, reference);
  } else {
    if (top.length === 0) throw new ImageNotFoundError(reference, 'the layout holds no manifest');
    if (top.length > 1) throw new ImageNotFoundError(reference, `the layout holds ${top.length} manifests: name one (oci:DIR:REF; ${describeRefs(top)})`);
    descriptor = top[0]!;
  }
  // No loop can form: each index is verified against its digest before it is parsed, and no
  // blob can hold its own digest (or an ancestor's). The depth limit bounds the walk anyway.
  for (let depth = 0; ; depth++) {
    const kind = mediaKind(descriptor.mediaType);
    if (kind !== 'index' && kind !== 'manifest') {
      throw new InvalidImageError(reference, `${descriptor.digest}: media type ${printable(descriptor.mediaType)} is no image manifest or index vmpod reads`);
    }
    if (kind === 'manifest') {
      const manifest = await readJsonBlob(storage, descriptor, 'manifest', reference);
      return { descriptor, manifest };
    }
    if (depth >= MAX_INDEX_DEPTH) throw new InvalidImageError(reference, `indexes nest deeper than ${MAX_INDEX_DEPTH}`);
    const nested = await readJsonBlob(storage, descriptor, 'index', reference);
    descriptor = pickPlatform(indexEntries(nested, `index ${descriptor.digest}`, reference), `index ${descriptor.digest}`, reference);
  }
}

/** An image of a layout: the manifest's config and layers read and checked. */
export async function openLayoutImage(storage: BlobStorage, imageReference: ImageReference): Promise<ImageSource> {
  const reference = formatImageReference(imageReference);
  const { descriptor, manifest } = await resolveManifest(storage, imageReference.ref, reference);
  const what = `manifest ${descriptor.digest}`;
  if (manifest['schemaVersion'] !== 2) throw new InvalidImageError(reference, `${what}: "schemaVersion" must be 2`);
  const configDescriptor = checkDescriptor(manifest['config'], `${what} config`, reference);
  if (mediaKind(configDescriptor.mediaType) !== 'config') {
    throw new InvalidImageError(reference, `${what}: config media type ${printable(configDescriptor.mediaType)} is no image config (an artifact?)`);
  }
  const rawLayers = manifest['layers'];
  if (!Array.isArray(rawLayers)) throw new InvalidImageError(reference, `${what}: "layers" must be an array`);
  if (rawLayers.length > MAX_LAYERS) throw new InvalidImageError(reference, `${what}: ${rawLayers.length} layers, more than the ${MAX_LAYERS} vmpod accepts`);
  const layerDescriptors = rawLayers.map((l, i) => checkDescriptor(l, `${what} layers[${i}]`, reference));
  const config = await readConfig(storage, blobPath(configDescriptor.digest, reference), configDescriptor.digest, configDescriptor.size, reference);
  if (config.rootfs.diff_ids.length !== layerDescriptors.length) {
    throw new InvalidImageError(reference, `${what} has ${layerDescriptors.length} layers, its config ${config.rootfs.diff_ids.length} diff_ids`);
  }
  const layers: ImageLayer[] = layerDescriptors.map((d, index) => {
    const compression = layerCompression(d.mediaType);
    if (compression === undefined) throw new InvalidImageError(reference, `${what} layers[${index}]: unknown layer media type ${printable(d.mediaType)}`);
    return { index, digest: d.digest, size: d.size, mediaType: d.mediaType, compression, diffId: config.rootfs.diff_ids[index]! };
  });
  return new StoredImageSource(storage, imageReference, {
    manifestDigest: descriptor.digest,
    manifestMediaType: descriptor.mediaType,
    annotations: { ...descriptor.annotations, ...stringRecord(manifest['annotations']) },
    configDigest: configDescriptor.digest,
    config,
    layers,
    layerNames: layers.map((l) => blobPath(l.digest!, reference)),
  });
}

function stringRecord(value: unknown): Record<string, string> {
  if (!isRecord(value)) return {};
  return Object.fromEntries(Object.entries(value).filter((e): e is [string, string] => typeof e[1] === 'string'));
}

/**
 * Reads, verifies and checks an image config blob; an image for another platform than
 * linux/amd64 (a single-platform image, or a wrong entry of an index) is ImageNotFoundError.
 */
export async function readConfig(storage: BlobStorage, name: string, digest: string, size: number | undefined, reference: string): Promise<ImageConfig> {
  const bytes = await readBlob(storage, name, { what: `config ${digest}`, reference, digest, size });
  const value = parseJsonObject(bytes, `config ${digest}`, reference);
  const config = checkImageConfig(value, (problem) => {
    throw new InvalidImageError(reference, problem);
  }, isDigest);
  if (config.os !== PLATFORM.os || config.architecture !== PLATFORM.architecture) {
    throw new ImageNotFoundError(reference, `the image is ${printable(config.os)}/${printable(config.architecture)}; vmpod runs ${PLATFORM.os}/${PLATFORM.architecture} images`);
  }
  return config;
}

/** What a {@link StoredImageSource} is made of. */
export interface StoredImage {
  manifestDigest: string | undefined;
  manifestMediaType: string | undefined;
  annotations: Record<string, string>;
  configDigest: string;
  config: ImageConfig;
  layers: ImageLayer[];
  /** Where each layer's blob is in the storage. */
  layerNames: string[];
}

/** An {@link ImageSource} over a {@link BlobStorage} (a layout directory, an archive). */
export class StoredImageSource implements ImageSource {
  readonly manifestDigest: string | undefined;
  readonly manifestMediaType: string | undefined;
  readonly annotations: Readonly<Record<string, string>>;
  readonly configDigest: string;
  readonly config: ImageConfig;
  readonly layers: readonly ImageLayer[];
  private readonly layerNames: string[];
  private closed = false;

  constructor(private readonly storage: BlobStorage, readonly reference: ImageReference, image: StoredImage) {
    this.manifestDigest = image.manifestDigest;
    this.manifestMediaType = image.manifestMediaType;
    this.annotations = Object.freeze({ ...image.annotations });
    this.configDigest = image.configDigest;
    this.config = image.config;
    this.layers = Object.freeze(image.layers.map((l) => Object.freeze({ ...l })));
    this.layerNames = image.layerNames;
  }

  openLayer(index: number, options: OpenLayerOptions = {}): Readable {
    const layer = this.layers[index];
    if (!Number.isInteger(index) || layer === undefined) throw new RangeError(`layer index ${index} is out of range (0..${this.layers.length - 1})`);
    if (this.closed) throw new InvalidImageError(formatImageReference(this.reference), 'the image source is closed');
    return layerStream(this.storage.open(this.layerNames[index]!), {
      what: `layer ${index}`,
      reference: formatImageReference(this.reference),
      digest: layer.digest,
      size: layer.size,
      compression: layer.compression,
      diffId: layer.diffId,
      signal: options.signal,
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.storage.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** Opens the image `reference` names in an OCI layout directory (`oci:DIR[:REF]`). */
export async function openLayout(reference: ImageReference): Promise<ImageSource> {
  return openLayoutImage(directoryStorage(reference.path), reference);
}
