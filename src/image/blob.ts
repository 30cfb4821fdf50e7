/**
 * Blobs of an image: digest syntax (checked before a digest becomes a file name), where a
 * layout keeps a blob, bounded and verified reads of the JSON blobs, and the verifying,
 * decompressing stream of a layer.
 *
 * @module
 */
import { createHash, type Hash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { PassThrough, Readable, Transform, pipeline, type TransformCallback } from 'node:stream';
import zlib from 'node:zlib';
import { Decompress as ZstdDecompress } from 'fzstd';
import { AbortError, VmpodError } from '../errors.js';
import { DigestMismatchError, InvalidImageError } from './errors.js';
import type { LayerCompression } from './media-types.js';

/** The digest algorithms of the image spec's registry that vmpod verifies, and their hex lengths. */
const ALGORITHMS: ReadonlyMap<string, number> = new Map([['sha256', 64], ['sha512', 128]]);

/** Largest index.json, manifest, config or Docker manifest.json read (containers/image uses 4 MiB too). */
export const MAX_JSON_BYTES = 4 << 20;

/**
 * True when `value` is `ALGORITHM:HEX` with a registered algorithm (sha256, sha512) and lowercase
 * hex of its exact length: the only digests that may become a path (`blobs/sha256/HEX`).
 */
export function isDigest(value: unknown): value is string {
  if (typeof value !== 'string') return false;
  const colon = value.indexOf(':');
  const length = ALGORITHMS.get(value.slice(0, colon));
  return length !== undefined && value.length === colon + 1 + length && /^[0-9a-f]+$/u.test(value.slice(colon + 1));
}

/** The path of a blob inside a layout (`blobs/ALG/HEX`); throws when `digest` is not a valid digest. */
export function blobPath(digest: string, reference: string): string {
  if (!isDigest(digest)) throw new InvalidImageError(reference, `${printable(digest)} is not a sha256 or sha512 digest`);
  const [algorithm, hex] = digest.split(':') as [string, string];
  return `blobs/${algorithm}/${hex}`;
}

/** A value shortened and quoted for an error message (a hostile string stays one line). */
export function printable(value: unknown): string {
  const text = typeof value === 'string' ? value : String(value);
  return JSON.stringify(text.length > 80 ? `${text.slice(0, 80)}…` : text);
}

function hashOf(digest: string): Hash {
  return createHash(digest.slice(0, digest.indexOf(':')));
}

/**
 * Where the files of a layout (or an archive) are read from: a directory, or the entries of a
 * tar. Names are relative paths made by vmpod (`index.json`, `blobs/sha256/HEX`, a Docker
 * archive's `manifest.json` entries once checked), never absolute.
 */
export interface BlobStorage {
  /** The stored size of `name`, or undefined when there is no such regular file. */
  size(name: string): Promise<number | undefined>;
  /** The bytes of `name`; the stream errors when it cannot be read. */
  open(name: string): Readable;
  /** Releases what it holds open. Idempotent. */
  close(): Promise<void>;
}

/** The files of a layout directory. */
export function directoryStorage(root: string): BlobStorage {
  const resolve = (name: string): string => {
    if (path.isAbsolute(name) || name.split('/').some((part) => part === '..' || part === '')) {
      throw new Error(`internal: blob name ${printable(name)} is not a plain relative path`);
    }
    return path.join(root, name);
  };
  return {
    async size(name) {
      const stat = await fs.promises.stat(resolve(name)).catch(() => undefined);
      return stat?.isFile() ? stat.size : undefined;
    },
    open(name) {
      // O_NONBLOCK: a FIFO put where a blob should be reads as empty (refused by size) instead
      // of hanging the open until a writer comes.
      const out = new PassThrough();
      fs.promises.open(resolve(name), fs.constants.O_RDONLY | fs.constants.O_NONBLOCK).then(
        (handle) => {
          if (out.destroyed) {
            void handle.close();
            return;
          }
          pipeline(handle.createReadStream(), out, () => {});
        },
        (error: unknown) => out.destroy(error as Error),
      );
      return out;
    },
    async close() {},
  };
}

/** What a blob read checks: its digest and size when a descriptor gave them, and a size limit. */
export interface BlobCheck {
  /** What the blob is, for messages (`manifest sha256:…`, `index.json`). */
  what: string;
  /** The image reference, for messages. */
  reference: string;
  /** The digest its bytes must hash to (none for index.json and a Docker archive's manifest.json). */
  digest?: string | undefined;
  /** The size the descriptor gives; more or fewer bytes are an error. */
  size?: number | undefined;
}

/** Counts and hashes the bytes that pass; at the end checks the count and the digest. */
class VerifyTransform extends Transform {
  private readonly hash: Hash | undefined;
  private count = 0;
  constructor(private readonly check: BlobCheck) {
    super();
    this.hash = check.digest !== undefined ? hashOf(check.digest) : undefined;
  }
  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.count += chunk.length;
    if (this.check.size !== undefined && this.count > this.check.size) {
      callback(new InvalidImageError(this.check.reference, `${this.check.what}: more bytes than the ${this.check.size} its descriptor gives`));
      return;
    }
    this.hash?.update(chunk);
    callback(null, chunk);
  }
  override _flush(callback: TransformCallback): void {
    const { size, digest, what, reference } = this.check;
    if (size !== undefined && this.count !== size) {
      callback(new InvalidImageError(reference, `${what}: ${this.count} bytes, its descriptor gives ${size} (truncated?)`));
      return;
    }
    if (digest !== undefined && this.hash) {
      const actual = `${digest.slice(0, digest.indexOf(':'))}:${this.hash.digest('hex')}`;
      if (actual !== digest) {
        callback(new DigestMismatchError(`${what} of ${reference}`, digest, actual));
        return;
      }
    }
    callback();
  }
}

/**
 * Reads a whole (small) blob: refused before reading when its stored size is over `limit` or
 * differs from the descriptor's; verified against the digest before it is returned.
 */
export async function readBlob(storage: BlobStorage, name: string, check: BlobCheck, limit = MAX_JSON_BYTES): Promise<Buffer> {
  const stored = await storage.size(name);
  if (stored === undefined) throw new InvalidImageError(check.reference, `${check.what} is missing (${name})`);
  if (check.size !== undefined && check.size > limit) {
    throw new InvalidImageError(check.reference, `${check.what}: its descriptor gives ${check.size} bytes, more than the ${limit} vmpod reads`);
  }
  if (stored > limit) throw new InvalidImageError(check.reference, `${check.what} is ${stored} bytes, more than the ${limit} vmpod reads`);
  if (check.size !== undefined && stored !== check.size) {
    throw new InvalidImageError(check.reference, `${check.what} is ${stored} bytes, its descriptor gives ${check.size}`);
  }
  const chunks: Buffer[] = [];
  const verify = new VerifyTransform(check);
  await new Promise<void>((resolve, reject) => {
    pipeline(storage.open(name), verify, (error) => (error ? reject(error) : resolve()));
    verify.on('data', (chunk: Buffer) => chunks.push(chunk));
  }).catch((error: unknown) => {
    if (error instanceof VmpodError) throw error;
    throw new InvalidImageError(check.reference, `${check.what} cannot be read (${(error as Error).message})`, { cause: error });
  });
  return Buffer.concat(chunks);
}

/** Parses a JSON blob; the result must be an object. */
export function parseJsonObject(bytes: Buffer, what: string, reference: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(bytes.toString('utf8'));
  } catch (error) {
    throw new InvalidImageError(reference, `${what} is not valid JSON (${(error as Error).message})`, { cause: error });
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new InvalidImageError(reference, `${what} must hold a JSON object`);
  return value as Record<string, unknown>;
}

/**
 * Feeds fzstd small slices, so that one input chunk (a zstd bomb: RLE blocks of 128 KiB for a few
 * bytes each) cannot make gigabytes at once; each slice's output is yielded, with backpressure.
 */
async function* zstdDecompress(source: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  const out: Buffer[] = [];
  const decoder = new ZstdDecompress((data) => {
    if (data.length > 0) out.push(Buffer.from(data));
  });
  const SLICE = 256;
  for await (const chunk of source) {
    for (let offset = 0; offset < chunk.length; offset += SLICE) {
      decoder.push(chunk.subarray(offset, offset + SLICE));
      while (out.length > 0) yield out.shift()!;
    }
  }
  decoder.push(new Uint8Array(0), true);
  while (out.length > 0) yield out.shift()!;
}

/** What {@link layerStream} needs to know of a layer. */
export interface LayerStreamCheck {
  /** `layer N`, for messages. */
  what: string;
  reference: string;
  /** The blob digest over the stored bytes; undefined when the format names none (a compressed Docker archive layer). */
  digest: string | undefined;
  size: number;
  compression: LayerCompression;
  diffId: string;
  signal?: AbortSignal | undefined;
}

/** The last stage: maps what is not a vmpod error (zlib's, fzstd's, a read error) into InvalidImageError. */
class LayerOutput extends PassThrough {
  constructor(private readonly check: LayerStreamCheck) {
    super();
  }
  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (error && !(error instanceof VmpodError)) {
      callback(new InvalidImageError(this.check.reference, `${this.check.what}: ${error.message}`, { cause: error }));
      return;
    }
    callback(error);
  }
}

/**
 * The uncompressed tar of a layer from its stored bytes `raw`: checks the stored size and blob
 * digest (over `raw`), decompresses, and checks the diff_id (over the output). A mismatch
 * destroys the returned stream with DigestMismatchError (a wrong size, a corrupt compressed
 * stream, an unreadable blob with InvalidImageError) instead of ending it: the bytes that came
 * before are UNTRUSTED, and whatever was made from them must be thrown away.
 */
export function layerStream(raw: Readable, check: LayerStreamCheck): Readable {
  const output = new LayerOutput(check);
  if (check.signal?.aborted) {
    raw.destroy();
    output.destroy(new AbortError(`reading ${check.what} of ${check.reference}`, { cause: check.signal.reason }));
    return output;
  }
  const blob = new VerifyTransform({ what: `${check.what} (blob)`, reference: check.reference, digest: check.digest, size: check.size });
  const diff = new VerifyTransform({ what: `${check.what} (diff_id)`, reference: check.reference, digest: check.diffId });
  const done = (): void => {};
  if (check.compression === 'gzip') pipeline(raw, blob, zlib.createGunzip(), diff, output, done);
  else if (check.compression === 'zstd') pipeline(raw, blob, zstdDecompress, diff, output, done);
  else pipeline(raw, blob, diff, output, done);
  const signal = check.signal;
  if (signal) {
    const onAbort = (): void => {
      output.destroy(new AbortError(`reading ${check.what} of ${check.reference}`, { cause: signal.reason }));
    };
    signal.addEventListener('abort', onAbort, { once: true });
    output.once('close', () => signal.removeEventListener('abort', onAbort));
  }
  return output;
}

/** An empty stream (for a zero-byte entry or file). */
export function emptyStream(): Readable {
  return Readable.from([]);
}
