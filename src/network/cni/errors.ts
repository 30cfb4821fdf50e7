/**
 * Errors of the CNI runtime. Each extends a class from `src/errors.ts`, so generic handlers
 * (`InvalidArgumentError`, `NotFoundError`, ...) still catch them, and each carries what a
 * caller needs to act: the plugin, the command, the network, and the plugin's own words.
 *
 * Timeouts and cancellation use the shared {@link TimeoutError} and {@link AbortError}.
 *
 * @module
 */
import {
  AlreadyExistsError,
  InvalidArgumentError,
  NotFoundError,
  VmpodError,
  type VmpodErrorOptions,
} from '../../errors.js';

/** The CNI operations a runtime asks plugins to perform. */
export type CniCommand = 'ADD' | 'CHECK' | 'DEL' | 'VERSION' | 'GC' | 'STATUS';

/** Which plugin was running, for what. */
export interface CniInvocation {
  /** The plugin's `type`, i.e. its executable's name. */
  readonly plugin: string;
  /** The CNI command it was running. */
  readonly command: CniCommand;
  /** The network (configuration list) name; empty for VERSION. */
  readonly network: string;
}

/** Where a configuration error was found. */
export interface CniConfigLocation {
  /** The file the configuration came from, when it came from one. */
  file?: string | undefined;
  /** 1-based line of a JSON syntax error. */
  line?: number | undefined;
  /** 1-based column of a JSON syntax error. */
  column?: number | undefined;
}

/** Names of the error codes that the CNI specification reserves. */
export const WELL_KNOWN_CNI_CODES: Readonly<Record<number, string>> = Object.freeze({
  1: 'incompatible CNI version',
  2: 'unsupported field in network configuration',
  3: 'container unknown or does not exist',
  4: 'invalid necessary environment variables',
  5: 'I/O failure',
  6: 'failed to decode content',
  7: 'invalid network config',
  11: 'try again later',
  50: 'plugin not available',
  51: 'plugin not available, existing containers may have limited connectivity',
});

function describe(inv: CniInvocation): string {
  const network = inv.network === '' ? '' : ` of network "${inv.network}"`;
  return `CNI plugin "${inv.plugin}" (${inv.command}${network})`;
}

/**
 * A network configuration (file or object) is invalid. `field` is the JSON path of the
 * offending value (`plugins[1].type`), prefixed with the file when there is one.
 */
export class CniConfigError extends InvalidArgumentError {
  /** The file the configuration came from, if any. */
  readonly file: string | undefined;
  /** Line of a JSON syntax error (1-based), if that is what is wrong. */
  readonly line: number | undefined;
  /** Column of a JSON syntax error (1-based), if that is what is wrong. */
  readonly column: number | undefined;
  constructor(path: string, message: string, location: CniConfigLocation = {}, options: VmpodErrorOptions = {}) {
    const where = location.file === undefined
      ? path
      : `${location.file}${location.line === undefined ? '' : `:${location.line}:${location.column ?? 1}`}${path === '' ? '' : ` ${path}`}`;
    super(where === '' ? 'config' : where, message, options);
    this.file = location.file;
    this.line = location.line;
    this.column = location.column;
  }
}

/** No executable for a plugin `type` exists in any plugin directory. */
export class CniPluginNotFoundError extends NotFoundError {
  /** The directories that were searched, in order. */
  readonly searched: readonly string[];
  constructor(plugin: string, searched: readonly string[], options: VmpodErrorOptions = {}) {
    super('CNI plugin', plugin, options);
    this.searched = searched;
    this.message = `CNI plugin "${plugin}" was not found in ${searched.join(', ')} (set pluginDirs, or install it)`;
  }
}

/** The plugins of a network and vmpod share no CNI version, or a command needs a newer one. */
export class CniVersionError extends VmpodError {
  constructor(message: string, options: VmpodErrorOptions = {}) {
    super('ERR_VMPOD_CNI_VERSION', message, options);
  }
}

/** A plugin answered with a CNI error result (`{code, msg, details}`). */
export class CniPluginError extends VmpodError implements CniInvocation {
  readonly plugin: string;
  readonly command: CniCommand;
  readonly network: string;
  /** The plugin's numeric CNI error code (1-99 are defined by the spec, 100+ are the plugin's). */
  readonly cniCode: number;
  /** The plugin's short message. */
  readonly msg: string;
  /** The plugin's longer explanation, when it gave one. */
  readonly details: string | undefined;
  /** The tail of the plugin's stderr (logs), bounded. */
  readonly stderr: string;
  constructor(inv: CniInvocation, cniCode: number, msg: string, details: string | undefined, stderr: string) {
    const known = WELL_KNOWN_CNI_CODES[cniCode];
    super(
      'ERR_VMPOD_CNI_PLUGIN',
      `${describe(inv)} failed with code ${cniCode}${known === undefined ? '' : ` (${known})`}: ${msg}${details ? `: ${details}` : ''}`,
    );
    this.plugin = inv.plugin;
    this.command = inv.command;
    this.network = inv.network;
    this.cniCode = cniCode;
    this.msg = msg;
    this.details = details;
    this.stderr = stderr;
  }

  /** True when the plugin asked to be retried later (code 11). */
  get temporary(): boolean {
    return this.cniCode === 11;
  }
}

/** A plugin could not be started, crashed, or exited non-zero without a CNI error result. */
export class CniExecError extends VmpodError implements CniInvocation {
  readonly plugin: string;
  readonly command: CniCommand;
  readonly network: string;
  /** The exit status, or null when it was killed by a signal or never ran. */
  readonly exitCode: number | null;
  /** The signal that killed it, if one did. */
  readonly signal: string | null;
  /** The tail of the plugin's stderr, bounded. */
  readonly stderr: string;
  constructor(
    inv: CniInvocation,
    what: string,
    exitCode: number | null,
    signal: string | null,
    stderr: string,
    options: VmpodErrorOptions = {},
  ) {
    const tail = stderr.trim();
    super('ERR_VMPOD_CNI_EXEC', `${describe(inv)} ${what}${tail === '' ? '' : `: ${excerpt(tail)}`}`, options);
    this.plugin = inv.plugin;
    this.command = inv.command;
    this.network = inv.network;
    this.exitCode = exitCode;
    this.signal = signal;
    this.stderr = stderr;
  }
}

/** A plugin exited 0 but its output is not a valid CNI result (not JSON, wrong shape, too large). */
export class CniOutputError extends VmpodError implements CniInvocation {
  readonly plugin: string;
  readonly command: CniCommand;
  readonly network: string;
  /** The start of what the plugin printed, bounded. */
  readonly output: string;
  constructor(inv: CniInvocation, problem: string, output: string, options: VmpodErrorOptions = {}) {
    super('ERR_VMPOD_CNI_OUTPUT', `${describe(inv)} printed an invalid result: ${problem}`, options);
    this.plugin = inv.plugin;
    this.command = inv.command;
    this.network = inv.network;
    this.output = excerpt(output);
  }
}

/** An attachment (network, container id, interface) is already in place. */
export class CniAttachmentExistsError extends AlreadyExistsError {
  constructor(
    readonly network: string,
    readonly containerId: string,
    readonly ifName: string,
    readonly existingNetwork: string,
  ) {
    super('CNI attachment', `${network}/${containerId}/${ifName}`);
    this.message = existingNetwork === network
      ? `container "${containerId}" is already attached to network "${network}" as "${ifName}": run DEL first`
      : `interface name "${ifName}" of container "${containerId}" is already used by network "${existingNetwork}"`;
  }
}

/** A cached result file exists but cannot be used. */
export class CniCacheError extends VmpodError {
  constructor(readonly file: string, message: string, options: VmpodErrorOptions = {}) {
    super('ERR_VMPOD_CNI_CACHE', `${file}: ${message}`, options);
  }
}

/** GC found several problems; each is in `errors`. */
export class CniGcError extends VmpodError {
  constructor(readonly network: string, readonly errors: readonly unknown[]) {
    super(
      'ERR_VMPOD_CNI_GC',
      `GC of network "${network}" had ${errors.length} error(s): ${errors.map((e) => (e instanceof Error ? e.message : String(e))).join('; ')}`,
      { cause: errors[0] },
    );
  }
}

/**
 * When ADD fails, the runtime runs DEL to undo what the chain did. If that DEL fails too, the
 * ADD error (still the one thrown) carries the DEL error here: something may be left behind.
 */
export function rollbackErrorOf(error: unknown): unknown {
  return typeof error === 'object' && error !== null ? (error as { rollbackError?: unknown }).rollbackError : undefined;
}

/** Shortens text for a message: the first 512 characters, one line per line. */
export function excerpt(text: string, max = 512): string {
  return text.length <= max ? text : `${text.slice(0, max)}... (${text.length - max} more characters)`;
}
