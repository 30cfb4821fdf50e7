/**
 * Calls into the native addon and turns its rejections into vmpod's typed errors.
 *
 * @internal
 * @module
 */
import { SystemError, type VmpodError } from '../errors.js';
import { native, type NativeAddon, type NativeSystemError } from '../native.js';

/** True for the errors the addon rejects with (they carry an errno name and a syscall). */
export function isNativeSystemError(e: unknown): e is NativeSystemError {
  return (
    e instanceof Error &&
    typeof (e as Partial<NativeSystemError>).code === 'string' &&
    typeof (e as Partial<NativeSystemError>).errno === 'number' &&
    typeof (e as Partial<NativeSystemError>).syscall === 'string'
  );
}

/** The {@link SystemError} for a native rejection: errno name, errno, syscall, and the native error as cause. */
export function systemError(e: NativeSystemError): SystemError {
  const message = `${e.description}${e.target ? ` (${e.target})` : ''}${e.detail ? `: ${e.detail}` : ''}`;
  return new SystemError(e.syscall, e.errno, e.code, message, { cause: e });
}

/**
 * Maps a native rejection to a more precise error (NotFoundError, AlreadyExistsError, ...), given
 * the {@link SystemError} it would otherwise be (to pass on as `cause`); undefined keeps the
 * SystemError.
 */
export type ErrorMap = (e: NativeSystemError, system: SystemError) => VmpodError | undefined;

/**
 * Runs `fn` against the addon and rethrows native rejections as typed errors: first through
 * `map`, otherwise as {@link SystemError}. Other errors pass through unchanged.
 */
export async function call<T>(fn: (addon: NativeAddon) => Promise<T>, map?: ErrorMap): Promise<T> {
  try {
    return await fn(native());
  } catch (e) {
    if (!isNativeSystemError(e)) throw e;
    const system = systemError(e);
    throw map?.(e, system) ?? system;
  }
}

/** Combines error maps: the first that maps wins. */
export function maps(...list: Array<ErrorMap | undefined>): ErrorMap {
  return (e, system) => {
    for (const map of list) {
      const mapped = map?.(e, system);
      if (mapped) return mapped;
    }
    return undefined;
  };
}
