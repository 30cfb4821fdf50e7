/**
 * The errors of OCI images: a reference that names nothing, a blob whose bytes do not hash to
 * its digest, an image whose JSON or layout is not what the image spec says, and a layer that
 * tries to write outside the root it is applied to.
 *
 * @module
 */
import { VmpodError, type VmpodErrorOptions } from '../errors.js';

/** The image (a layout, an archive) has no manifest for the reference asked for. */
export class ImageNotFoundError extends VmpodError {
  constructor(readonly reference: string, readonly detail: string, options: VmpodErrorOptions = {}) {
    super('ERR_VMPOD_IMAGE_NOT_FOUND', `image ${reference}: ${detail}`, options);
  }
}

/** A blob's bytes (or a layer's uncompressed bytes) do not hash to the digest that names them. */
export class DigestMismatchError extends VmpodError {
  constructor(
    /** What was checked, e.g. `layer 2 of oci:/images/app:1.0` or `diff_id of layer 2`. */
    readonly what: string,
    readonly expected: string,
    readonly actual: string,
    options: VmpodErrorOptions = {},
  ) {
    super('ERR_VMPOD_DIGEST_MISMATCH', `${what}: expected ${expected}, got ${actual}`, options);
  }
}

/** The image's layout, index, manifest or config is not a usable OCI (or Docker) image. */
export class InvalidImageError extends VmpodError {
  constructor(readonly reference: string, problem: string, options: VmpodErrorOptions = {}) {
    super('ERR_VMPOD_INVALID_IMAGE', `image ${reference}: ${problem}`, options);
  }
}

/** A layer entry would be written outside the root (a `..` path, a link or symlink that leaves it). */
export class LayerEscapeError extends VmpodError {
  constructor(
    /** The entry's name as the layer's tar stores it. */
    readonly entry: string,
    problem: string,
    options: VmpodErrorOptions = {},
  ) {
    super('ERR_VMPOD_LAYER_ESCAPE', `layer entry ${JSON.stringify(entry)}: ${problem}`, options);
  }
}
