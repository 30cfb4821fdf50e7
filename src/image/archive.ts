/**
 * Image archives, read in place (never extracted): an OCI archive is a tar of an OCI layout;
 * a Docker archive (`docker save`) is a tar with a manifest.json listing, per image, its config
 * file, its RepoTags and its layer files (`<id>/layer.tar` before Docker 25; `blobs/sha256/HEX`,
 * with `<id>/layer.tar` symlinks to them, since).
 *
 * What a Docker archive lets vmpod verify: the config against the digest its file name gives
 * (`HEX.json` or `blobs/sha256/HEX`), each layer against its diff_id from the config, and a layer
 * under `blobs/sha256/HEX` against HEX too. An uncompressed layer's blob digest is its diff_id;
 * a compressed `<id>/layer.tar` (docker load accepts them) has no digest in the format, only its
 * diff_id is checked.
 *
 * @module
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs, { type FileHandle } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { ImageNotFoundError, InvalidImageError } from './errors.js';
import { emptyStream, isDigest, printable, readBlob, type BlobStorage } from './blob.js';
import { MAX_LAYERS } from './config.js';
import { openLayoutImage, readConfig, StoredImageSource } from './layout.js';
import { sniffCompression, type LayerCompression } from './media-types.js';
import { formatImageReference, normalizeDockerName, type ImageReference } from './reference.js';
import type { ImageLayer, ImageSource } from './source.js';
import { indexTar, lookupFile, normalizeEntryName, TarIndexError, type TarIndexEntry } from './tar-index.js';

/** The entries of a tar file, opened and indexed, as a {@link BlobStorage}. */
export async function openTarStorage(file: string, reference: string): Promise<BlobStorage & { entries: Map<string, TarIndexEntry>; head(name: string, length: number): Promise<Buffer> }> {
  let handle: FileHandle;
  try {
    // O_NONBLOCK: a FIFO given as the archive is refused below (not a regular file) instead of hanging the open.
    handle = await fs.open(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new ImageNotFoundError(reference, `${file} does not exist`, { cause: error });
    throw new InvalidImageError(reference, `${file} cannot be opened (${(error as Error).message})`, { cause: error });
  }
  let entries: Map<string, TarIndexEntry>;
  try {
    const stat = await handle.stat();
    if (!stat.isFile()) throw new InvalidImageError(reference, `${file} is not a regular file`);
    entries = await indexTar(handle, stat.size);
  } catch (error) {
    await handle.close();
    if (error instanceof TarIndexError) throw new InvalidImageError(reference, `${file} is no usable tar: ${error.message}`, { cause: error });
    throw error;
  }
  let closed = false;
  const openEntry = (name: string): Readable => {
    const entry = lookupFile(entries, name);
    if (entry === undefined) {
      const stream = emptyStream();
      stream.destroy(new InvalidImageError(reference, `${printable(name)} is missing from the archive`));
      return stream;
    }
    if (entry.size === 0) return emptyStream();
    return createReadStream('', { fd: handle, start: entry.offset, end: entry.offset + entry.size - 1, autoClose: false });
  };
  return {
    entries,
    async size(name) {
      return lookupFile(entries, name)?.size;
    },
    open: openEntry,
    async head(name, length) {
      const entry = lookupFile(entries, name);
      if (entry === undefined) return Buffer.alloc(0);
      const buffer = Buffer.alloc(Math.min(length, entry.size));
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, entry.offset);
      return buffer.subarray(0, bytesRead);
    },
    async close() {
      if (closed) return;
      closed = true;
      await handle.close();
    },
  };
}

/** Opens the image `reference` names in an OCI archive (`oci-archive:FILE[:REF]`). */
export async function openOciArchive(reference: ImageReference): Promise<ImageSource> {
  const storage = await openTarStorage(reference.path, formatImageReference(reference));
  try {
    return await openLayoutImage(storage, reference);
  } catch (error) {
    await storage.close();
    throw error;
  }
}

const DOCKER_LAYER_TYPES: Record<LayerCompression, string> = {
  none: 'application/vnd.docker.image.rootfs.diff.tar',
  gzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  zstd: 'application/vnd.docker.image.rootfs.diff.tar.zstd',
};

/** The digest a Docker archive's file name gives: `HEX.json` (config), `blobs/sha256/HEX`; else undefined. */
function digestOfName(name: string): string | undefined {
  const legacy = /^([0-9a-f]{64})\.json$/u.exec(name);
  if (legacy) return `sha256:${legacy[1]}`;
  const blob = /^blobs\/(sha256|sha512)\/([0-9a-f]+)$/u.exec(name);
  if (blob && isDigest(`${blob[1]}:${blob[2]}`)) return `${blob[1]}:${blob[2]}`;
  return undefined;
}

function entryName(value: unknown, what: string, reference: string): string {
  const name = typeof value === 'string' ? normalizeEntryName(value) : undefined;
  if (name === undefined || name === '') throw new InvalidImageError(reference, `manifest.json: ${what} ${printable(value)} is no relative path inside the archive`);
  return name;
}

/** Opens the image `reference` names in a Docker archive (`docker-archive:FILE[:NAME:TAG|:@N]`). */
export async function openDockerArchive(imageReference: ImageReference): Promise<ImageSource> {
  const reference = formatImageReference(imageReference);
  const storage = await openTarStorage(imageReference.path, reference);
  try {
    const list = JSON.parse(
      (await readBlob(storage, 'manifest.json', { what: 'manifest.json', reference }).catch((error: unknown) => {
        throw new InvalidImageError(reference, 'is not a Docker archive (no readable manifest.json)', { cause: error });
      })).toString('utf8'),
    ) as unknown;
    if (!Array.isArray(list)) throw new InvalidImageError(reference, 'manifest.json must hold a JSON array');
    const images = list.map((item, i) => {
      if (typeof item !== 'object' || item === null || Array.isArray(item)) throw new InvalidImageError(reference, `manifest.json[${i}] must be an object`);
      const record = item as Record<string, unknown>;
      const tags = record['RepoTags'] ?? [];
      if (!Array.isArray(tags) || !tags.every((t) => typeof t === 'string')) throw new InvalidImageError(reference, `manifest.json[${i}].RepoTags must be an array of strings`);
      return { record, tags: tags as string[] };
    });
    let picked: Record<string, unknown>;
    const allTags = (): string => images.flatMap((i) => i.tags).slice(0, 20).map((t) => printable(t)).join(', ') || 'none';
    if (imageReference.index !== undefined) {
      const image = images[imageReference.index];
      if (image === undefined) throw new ImageNotFoundError(reference, `the archive holds ${images.length} image(s), no @${imageReference.index}`);
      picked = image.record;
    } else if (imageReference.ref !== undefined) {
      const matches = images.filter((i) => i.tags.some((t) => normalizeDockerName(t) === imageReference.ref));
      if (matches.length === 0) throw new ImageNotFoundError(reference, `no image is tagged ${printable(imageReference.ref)} (its tags: ${allTags()})`);
      if (matches.length > 1) throw new InvalidImageError(reference, `${matches.length} images are tagged ${printable(imageReference.ref)}`);
      picked = matches[0]!.record;
    } else {
      if (images.length === 0) throw new ImageNotFoundError(reference, 'the archive holds no image');
      if (images.length > 1) throw new ImageNotFoundError(reference, `the archive holds ${images.length} images: name one (docker-archive:FILE:NAME:TAG or :@N; its tags: ${allTags()})`);
      picked = images[0]!.record;
    }
    const configName = entryName(picked['Config'], 'Config', reference);
    const rawLayers = picked['Layers'];
    if (!Array.isArray(rawLayers)) throw new InvalidImageError(reference, 'manifest.json: "Layers" must be an array');
    if (rawLayers.length > MAX_LAYERS) throw new InvalidImageError(reference, `manifest.json: ${rawLayers.length} layers, more than the ${MAX_LAYERS} vmpod accepts`);
    const layerNames = rawLayers.map((l, i) => entryName(l, `Layers[${i}]`, reference));
    const configSize = await storage.size(configName);
    if (configSize === undefined) throw new InvalidImageError(reference, `the config ${printable(configName)} is missing from the archive`);
    const namedDigest = digestOfName(configName);
    const configBytes = namedDigest === undefined ? await readBlob(storage, configName, { what: `config ${configName}`, reference }) : undefined;
    const configDigest = namedDigest ?? `sha256:${createHash('sha256').update(configBytes!).digest('hex')}`;
    const config = await readConfig(storage, configName, configDigest, configSize, reference);
    if (config.rootfs.diff_ids.length !== layerNames.length) {
      throw new InvalidImageError(reference, `manifest.json lists ${layerNames.length} layers, the config ${config.rootfs.diff_ids.length} diff_ids`);
    }
    const layers: ImageLayer[] = [];
    for (const [index, name] of layerNames.entries()) {
      const size = await storage.size(name);
      if (size === undefined) throw new InvalidImageError(reference, `layer ${index} ${printable(name)} is missing from the archive`);
      const compression = sniffCompression(await storage.head(name, 4));
      const diffId = config.rootfs.diff_ids[index]!;
      const digest = digestOfName(name) ?? (compression === 'none' ? diffId : undefined);
      layers.push({ index, digest, size, mediaType: DOCKER_LAYER_TYPES[compression], compression, diffId });
    }
    return new StoredImageSource(storage, imageReference, {
      manifestDigest: undefined,
      manifestMediaType: undefined,
      annotations: {},
      configDigest,
      config,
      layers,
      layerNames,
    });
  } catch (error) {
    await storage.close();
    if (error instanceof SyntaxError) throw new InvalidImageError(reference, `manifest.json is not valid JSON (${error.message})`, { cause: error });
    throw error;
  }
}
