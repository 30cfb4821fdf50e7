/**
 * Errors of volumes. All extend {@link VmpodError}.
 *
 * @module
 */
import { VmpodError, type VmpodErrorOptions } from '../errors.js';

/** A read-only path (or volume) was asked for read-write. Nothing was mounted. */
export class VolumeReadOnlyError extends VmpodError {
  constructor(
    /** The volume name. */
    readonly volume: string,
    /** The host path, or undefined when the volume itself is read-only. */
    readonly path: string | undefined,
    options: VmpodErrorOptions = {},
  ) {
    super(
      'ERR_VMPOD_VOLUME_READ_ONLY',
      path === undefined
        ? `volume "${volume}" is read-only: mount it in the container with readOnly: true`
        : `volume "${volume}": ${path} is read-only on the host (a read-only mount or file): give the volume readOnly: true`,
      options,
    );
  }
}
