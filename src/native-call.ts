/**
 * Calls into the native addon, and the one conversion of its failures into vmpod's typed errors
 * ({@link SystemError} with errno name, errno and syscall, or a more precise error by a map).
 *
 * @internal
 * @module
 */
import { SystemError, type VmpodError } from './errors.js';
import { native, type NativeAddon, type NativeSystemError } from './native.js';

/** True for the errors the addon rejects with (they carry an errno name and a syscall). */
export function isNativeSystemError(e: unknown): e is NativeSystemError {
  return (
    e instanceof Error &&
    typeof (e as Partial<NativeSystemError>).code === 'string' &&
    typeof (e as Partial<NativeSystemError>).errno === 'number' &&
    typeof (e as Partial<NativeSystemError>).syscall === 'string'
  );
}

/**
 * The {@link SystemError} for a native failure: errno name, errno, syscall, and the native error
 * as cause. The one converter from the addon's errors to vmpod's; anything else passes through.
 */
export function systemError(e: unknown): unknown {
  if (!isNativeSystemError(e)) return e;
  const description = e.description ?? e.message.replace(`${e.syscall} `, '');
  const message = `${description}${e.target ? ` (${e.target})` : ''}${e.detail ? `: ${e.detail}` : ''}`;
  return new SystemError(e.syscall, Math.abs(e.errno), e.code, message, { cause: e });
}

/**
 * Maps a native failure to a more precise error (NotFoundError, AlreadyExistsError, ...), given
 * the {@link SystemError} it would otherwise be (to pass on as `cause`); undefined keeps the
 * SystemError.
 */
export type NativeErrorMap = (e: NativeSystemError, system: SystemError) => VmpodError | undefined;

/**
 * Runs `fn` against the addon and rethrows native failures as typed errors: first through
 * `map`, otherwise as {@link SystemError}. Other errors pass through unchanged.
 */
export async function callNative<T>(fn: (addon: NativeAddon) => Promise<T> | T, map?: NativeErrorMap): Promise<T> {
  try {
    return await fn(native());
  } catch (e) {
    if (!isNativeSystemError(e)) throw e;
    const system = systemError(e) as SystemError;
    throw map?.(e, system) ?? system;
  }
}

/** Combines error maps: the first that maps wins. */
export function combineErrorMaps(...list: Array<NativeErrorMap | undefined>): NativeErrorMap {
  return (e, system) => {
    for (const map of list) {
      const mapped = map?.(e, system);
      if (mapped) return mapped;
    }
    return undefined;
  };
}
