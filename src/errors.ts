/**
 * Every error vmpod throws is a {@link VmpodError}: it has a stable `code` that scripts can
 * switch on, a message that says what is wrong (and, where there is one, the fix), and the
 * underlying `cause` when another error led to it.
 *
 * @module
 */

/** Options shared by all vmpod error constructors. */
export interface VmpodErrorOptions {
  /** The error that led to this one. */
  cause?: unknown;
}

/** Base class of every error vmpod throws. */
export class VmpodError extends Error {
  /** Stable machine-readable code, e.g. `ERR_VMPOD_INVALID_ARGUMENT`. */
  readonly code: string;

  constructor(code: string, message: string, options: VmpodErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
  }

  override get name(): string {
    return this.constructor.name;
  }
}

/** An input (id, interface name, address, path, config field) was rejected before any side effect. */
export class InvalidArgumentError extends VmpodError {
  /** Dotted path of the offending field, e.g. `network.endpoints[0].mac`. */
  readonly field: string;
  constructor(field: string, message: string, options: VmpodErrorOptions = {}) {
    super('ERR_VMPOD_INVALID_ARGUMENT', `${field}: ${message}`, options);
    this.field = field;
  }
}

/** A named object (namespace, link, sandbox, container, ...) does not exist. */
export class NotFoundError extends VmpodError {
  constructor(
    readonly kind: string,
    readonly id: string,
    options: VmpodErrorOptions = {},
  ) {
    super('ERR_VMPOD_NOT_FOUND', `${kind} "${id}" does not exist`, options);
  }
}

/** A named object (namespace, link, sandbox, container, ...) already exists. */
export class AlreadyExistsError extends VmpodError {
  constructor(
    readonly kind: string,
    readonly id: string,
    options: VmpodErrorOptions = {},
  ) {
    super('ERR_VMPOD_ALREADY_EXISTS', `${kind} "${id}" already exists`, options);
  }
}

/** A system call made by the native addon failed. Mirrors Node's own system errors. */
export class SystemError extends VmpodError {
  /** The errno name, e.g. `EEXIST`. */
  readonly errnoName: string;
  /** The positive errno value. */
  readonly errno: number;
  /** The failing system call or netlink operation, e.g. `RTM_NEWLINK`. */
  readonly syscall: string;
  constructor(syscall: string, errno: number, errnoName: string, message: string, options: VmpodErrorOptions = {}) {
    super('ERR_VMPOD_SYSTEM', `${syscall}: ${message} (${errnoName})`, options);
    this.errno = errno;
    this.errnoName = errnoName;
    this.syscall = syscall;
  }
}

/** An operation was called in a state that does not allow it. */
export class InvalidStateError extends VmpodError {
  /**
   * `from` is the current state; `to` the state the call would go to, or, with `action` (a call
   * that needs a state rather than changing it), the state that call needs. `hint` says what to
   * do about it. `message` replaces the generic text (the state machine words it for sandboxes
   * and containers: `cannot delete sandbox "web": it is running; stop it first, ...`).
   */
  constructor(
    readonly object: string,
    readonly from: string,
    readonly to: string,
    options: VmpodErrorOptions & { action?: string; hint?: string; message?: string } = {},
  ) {
    super(
      'ERR_VMPOD_INVALID_STATE',
      (options.message ??
        (options.action === undefined
          ? `${object}: cannot go from "${from}" to "${to}"`
          : `${object} is "${from}": ${options.action} needs it "${to}"`)) + (options.hint === undefined ? '' : `; ${options.hint}`),
      options,
    );
  }
}

/** A long operation was cancelled through its AbortSignal. */
export class AbortError extends VmpodError {
  constructor(what: string, options: VmpodErrorOptions = {}) {
    super('ERR_VMPOD_ABORTED', `${what} was aborted`, options);
  }
}

/**
 * A container's process could not be executed: its command was not found (`reason`
 * `not-found`: docker and shells exit 127) or is not executable (`not-executable`, e.g. a
 * directory, no execute permission, a wrong binary format: 126). `cause` is the guest's answer.
 */
export class ExecFailedError extends VmpodError {
  constructor(
    readonly command: string,
    readonly reason: 'not-found' | 'not-executable',
    message: string,
    options: VmpodErrorOptions = {},
  ) {
    super(reason === 'not-found' ? 'ERR_VMPOD_COMMAND_NOT_FOUND' : 'ERR_VMPOD_COMMAND_NOT_EXECUTABLE', message, options);
  }
}

/** A long operation did not finish in time. */
export class TimeoutError extends VmpodError {
  constructor(what: string, readonly timeoutMs: number, options: VmpodErrorOptions = {}) {
    super('ERR_VMPOD_TIMEOUT', `${what} did not finish within ${timeoutMs} ms`, options);
  }
}

/** The native addon is missing or was built for another version of vmpod. */
export class AddonError extends VmpodError {
  constructor(message: string, options: VmpodErrorOptions = {}) {
    super('ERR_VMPOD_ADDON', message, options);
  }
}
