/**
 * Ctrl-C in a script: {@link abortOnSignals} turns SIGINT and SIGTERM into an AbortSignal, so
 * that what is under way is cancelled and `await using` gets to clean up, instead of Node's
 * default of ending the process at once (which leaves a VM that was booting running, with its
 * daemons and mounts, until `vmpod delete -f`).
 *
 * ```ts
 * import { Sandbox, abortOnSignals } from 'vmpod';
 *
 * const signal = abortOnSignals();
 * await using sandbox = await Sandbox.create({ memoryMiB: 256 }, { signal });
 * await sandbox.start({ signal });   // Ctrl-C here: start() fails, the sandbox is deleted, exit 130
 * ```
 *
 * @module
 */
import os from 'node:os';
import { InvalidArgumentError, VmpodError } from './errors.js';

/** The reason of the AbortSignal that {@link abortOnSignals} aborts: the process got `signal`. */
export class InterruptedError extends VmpodError {
  constructor(
    /** The signal the process got, e.g. `SIGINT`. */
    readonly signal: NodeJS.Signals,
  ) {
    super('ERR_VMPOD_INTERRUPTED', `interrupted by ${signal}`);
  }
}

/** Options of {@link abortOnSignals}. */
export interface AbortOnSignalsOptions {
  /** The signals to handle (default SIGINT and SIGTERM). */
  signals?: readonly NodeJS.Signals[];
  /** Say nothing on stderr when a signal comes (default: one line per signal). */
  quiet?: boolean;
}

/** The one controller of this process: signals are per process, so every call shares it. */
interface SharedState {
  controller: AbortController;
  handled: Set<NodeJS.Signals>;
  /** The last signal received. */
  received: NodeJS.Signals | undefined;
  exitCode: number;
  quiet: boolean;
}
let shared: SharedState | undefined;

/** The number of a signal, for the exit code 128 + N (SIGINT 2, SIGTERM 15). */
function signalNumber(signal: unknown): number {
  return typeof signal === 'string' && Object.hasOwn(os.constants.signals, signal) ? (os.constants.signals as Record<string, number>)[signal]! : 0;
}

/**
 * Makes SIGINT and SIGTERM (or `options.signals`) cancel what the script does, and returns the
 * AbortSignal to pass to vmpod's calls (`start({ signal })`, `createContainer({ signal })`,
 * `container.wait({ signal })`, ...).
 *
 * - The first signal aborts the returned AbortSignal (its `reason` an {@link InterruptedError})
 *   instead of ending the process: the call under way fails with an `AbortError` (undoing what
 *   it made), the error leaves the `await using` scopes, which stop and delete the sandboxes
 *   they hold, and the script ends. Its exit code is then 128 + the signal's number (130 for
 *   SIGINT, 143 for SIGTERM), whatever the script does after, as a shell expects of a process
 *   that a signal ended.
 * - A second signal ends the process at once with that code, cleanup or not: what is left is
 *   recorded in the sandboxes' state and `vmpod delete -f ID` (or `Sandbox.remove`) removes it.
 *
 * A call that is not given the signal is not cancelled: it runs to its end (or its own deadline)
 * before the script gets to the cleanup. Every call returns the same AbortSignal (signals belong
 * to the process); a later call can add signals to the set handled.
 */
export function abortOnSignals(options: AbortOnSignalsOptions = {}): AbortSignal {
  const signals = options.signals ?? ['SIGINT', 'SIGTERM'];
  if (!Array.isArray(signals) || signals.length === 0) throw new InvalidArgumentError('signals', 'must be a non-empty array of signal names such as "SIGINT"');
  for (const signal of signals) {
    if (signalNumber(signal) === 0 || signal === 'SIGKILL' || signal === 'SIGSTOP') {
      throw new InvalidArgumentError('signals', `${JSON.stringify(signal)} is not a signal a process can handle`);
    }
  }
  if (!shared) {
    const state: SharedState = { controller: new AbortController(), handled: new Set(), received: undefined, exitCode: 0, quiet: options.quiet === true };
    // The exit code says a signal ended the script, however it leaves: an uncaught AbortError
    // would make it 1, a normal end 0.
    process.on('exit', () => {
      if (state.received !== undefined) process.exitCode = state.exitCode;
    });
    shared = state;
  }
  const state = shared;
  for (const signal of signals) {
    if (state.handled.has(signal)) continue;
    state.handled.add(signal);
    process.on(signal, () => {
      const first = state.received;
      state.received = signal;
      state.exitCode = 128 + signalNumber(signal);
      process.exitCode = state.exitCode;
      if (first !== undefined) {
        if (!state.quiet) process.stderr.write(`${signal} after ${first}: exiting now; "vmpod delete -f ID" removes what is left\n`);
        process.exit(state.exitCode);
      }
      if (!state.quiet) process.stderr.write(`${signal}: cancelling and cleaning up (a second signal exits at once)\n`);
      state.controller.abort(new InterruptedError(signal));
    });
  }
  return state.controller.signal;
}
