/**
 * Opens an {@link ImageSource} from a reference text (`oci:DIR[:REF]`, `oci-archive:FILE[:REF]`,
 * `docker-archive:FILE[:NAME:TAG|:@N]`).
 *
 * @module
 */
import fs from 'node:fs/promises';
import { AbortError } from '../errors.js';
import { openDockerArchive, openOciArchive } from './archive.js';
import { ImageNotFoundError } from './errors.js';
import { openLayout } from './layout.js';
import { formatImageReference, parseImageReference, type ImageReference } from './reference.js';
import type { ImageSource } from './source.js';

/** Options of {@link openImageSource}. */
export interface OpenImageSourceOptions {
  /** Aborting before the source is open throws vmpod's AbortError (and closes what was opened). */
  signal?: AbortSignal;
}

/**
 * Opens the image a reference names: parses it (InvalidArgumentError), finds its manifest
 * (ImageNotFoundError when the path or the ref names nothing), and reads and verifies its
 * index, manifest and config (InvalidImageError, DigestMismatchError). Close it when done.
 */
export async function openImageSource(reference: string | ImageReference, options: OpenImageSourceOptions = {}): Promise<ImageSource> {
  const parsed = typeof reference === 'string' ? parseImageReference(reference) : reference;
  const what = `opening image ${formatImageReference(parsed)}`;
  if (options.signal?.aborted) throw new AbortError(what, { cause: options.signal.reason });
  let source: ImageSource;
  if (parsed.transport === 'oci') {
    const stat = await fs.stat(parsed.path).catch(() => undefined);
    if (!stat) throw new ImageNotFoundError(formatImageReference(parsed), `${parsed.path} does not exist`);
    source = await openLayout(parsed);
  } else if (parsed.transport === 'oci-archive') source = await openOciArchive(parsed);
  else source = await openDockerArchive(parsed);
  if (options.signal?.aborted) {
    await source.close();
    throw new AbortError(what, { cause: options.signal.reason });
  }
  return source;
}
