/**
 * Errors of the guest asset builder and of the asset check made before a boot.
 *
 * @module
 */
import { VmpodError, type VmpodErrorOptions } from '../errors.js';

/** The step of {@link buildGuestAssets} that was running when something happened. */
export type GuestBuildStep =
  | 'resolve'
  | 'download'
  | 'unpack'
  | 'kernel'
  | 'modules'
  | 'initramfs'
  | 'install'
  | 'done';

/** Building the guest assets failed; the message says which step and how to fix it. */
export class GuestBuildError extends VmpodError {
  constructor(
    readonly step: GuestBuildStep,
    message: string,
    options: VmpodErrorOptions = {},
  ) {
    super('ERR_VMPOD_GUEST_BUILD', `guest build (${step}): ${message}`, options);
  }
}

/** Guest assets are missing, incomplete or do not match their manifest. */
export class GuestAssetsError extends VmpodError {
  constructor(
    readonly dir: string,
    message: string,
    options: VmpodErrorOptions = {},
  ) {
    super('ERR_VMPOD_GUEST_ASSETS', `guest assets in ${dir}: ${message}`, options);
  }
}

/** A helper program (apt-get, dpkg-deb, lz4, depmod, ...) failed. */
export class CommandError extends VmpodError {
  constructor(
    readonly command: string,
    readonly args: readonly string[],
    readonly exitCode: number | null,
    readonly stderr: string,
    options: VmpodErrorOptions = {},
  ) {
    const tail = stderr.trim().split('\n').slice(-5).join('\n');
    super(
      'ERR_VMPOD_COMMAND',
      `${command} ${args.join(' ')} failed${exitCode === null ? '' : ` with exit code ${exitCode}`}${tail ? `: ${tail}` : ''}`,
      options,
    );
  }
}
