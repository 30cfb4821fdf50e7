/**
 * The lifecycle of a sandbox and of a container as checked state machines: one transition table
 * each, and every transition goes through {@link assertTransition}, so a call made in the wrong
 * state fails with an {@link InvalidStateError} naming both states instead of doing something
 * half-way.
 *
 * A sandbox has transitional states (`starting`, `stopping`, `deleting`): they are written to its
 * record with the operation's owner before the operation's slow part (talking to the guest), which
 * runs without the record lock. Another process that finds one knows an operation is under way,
 * and whose it is; when the owner died, the next lifecycle call finishes (or undoes) it.
 *
 * @module
 */
import { InvalidStateError } from '../errors.js';

/**
 * States of a sandbox:
 * - `created`: config validated and persisted, nothing running yet;
 * - `starting`: host resources being prepared, the VM booting, its agent coming up;
 * - `running`: the VM runs and its agent answered;
 * - `paused`: the VM's vCPUs are stopped (QMP `stop`);
 * - `stopping`: the VM is being shut down and what it used released;
 * - `stopped`: the VM is gone (stopped on request, or it died); host resources kept for the next start;
 * - `deleting`: everything the sandbox made on the host being removed;
 * - `deleted`: gone (never persisted: the record goes with it).
 */
export type SandboxState = 'created' | 'starting' | 'running' | 'paused' | 'stopping' | 'stopped' | 'deleting' | 'deleted';

/** Every sandbox state, for checks of persisted records. */
export const SANDBOX_STATES: readonly SandboxState[] = ['created', 'starting', 'running', 'paused', 'stopping', 'stopped', 'deleting', 'deleted'];

const SANDBOX_TRANSITIONS: Readonly<Record<SandboxState, readonly SandboxState[]>> = {
  created: ['starting', 'deleting'],
  starting: ['running', 'stopping', 'stopped'],
  running: ['paused', 'stopping'],
  paused: ['running', 'stopping'],
  stopping: ['stopped'],
  stopped: ['starting', 'deleting'],
  deleting: ['deleted'],
  deleted: [],
};

/** States in which the sandbox's VM may exist. */
export const VM_STATES: ReadonlySet<SandboxState> = new Set(['starting', 'running', 'paused', 'stopping']);

/** States that name an operation under way (the record says whose). */
export const TRANSITIONAL_STATES: ReadonlySet<SandboxState> = new Set(['starting', 'stopping', 'deleting']);

/**
 * States of a container:
 * - `created`: the agent made its namespaces and rootfs; the process has not been started;
 * - `running`: its init process runs;
 * - `paused`: its processes are frozen (its cgroup in the guest; `runc pause`), the rest of its
 *   sandbox runs on; not to be confused with a paused sandbox, whose whole VM is stopped;
 * - `stopped`: its init process exited (the exit status is kept until delete);
 * - `deleted`: gone from the guest.
 */
export type ContainerState = 'created' | 'running' | 'paused' | 'stopped' | 'deleted';

const CONTAINER_TRANSITIONS: Readonly<Record<ContainerState, readonly ContainerState[]>> = {
  created: ['running', 'stopped', 'deleted'],
  running: ['paused', 'stopped'],
  // SIGKILL ends a paused container (a frozen process still dies of it).
  paused: ['running', 'stopped'],
  stopped: ['deleted'],
  deleted: [],
};

/** True when `from -> to` is a legal sandbox transition. */
export function isValidSandboxTransition(from: SandboxState, to: SandboxState): boolean {
  return SANDBOX_TRANSITIONS[from].includes(to);
}

/** True when `from -> to` is a legal container transition. */
export function isValidContainerTransition(from: ContainerState, to: ContainerState): boolean {
  return CONTAINER_TRANSITIONS[from].includes(to);
}

/** A state in words: `is running`, `has exited`, ... (what follows the object's name). */
function stateWords(kind: 'sandbox' | 'container', state: string): string {
  if (kind === 'container') {
    if (state === 'stopped') return 'has exited';
    if (state === 'created') return 'has not been started';
    if (state === 'deleted') return 'was deleted';
  } else if (state === 'created') {
    return 'has not been started';
  } else if (state === 'deleted') {
    return 'was deleted';
  }
  return `is ${state}`;
}

/** The operation that goes to `to`, as a user calls it. */
const OPERATIONS: Readonly<Record<'sandbox' | 'container', Readonly<Record<string, string>>>> = {
  sandbox: { starting: 'start', running: 'resume', paused: 'pause', stopping: 'stop', stopped: 'stop', deleting: 'delete', deleted: 'delete' },
  container: { created: 'create', running: 'start', paused: 'pause', stopped: 'stop', deleted: 'delete' },
};

/** What to do about `from` for an operation that goes to (or needs) `to`, when there is something obvious. */
function defaultHint(kind: 'sandbox' | 'container', from: string, to: string): string | undefined {
  if (kind === 'sandbox') {
    if ((to === 'deleting' || to === 'deleted') && VM_STATES.has(from as SandboxState)) return 'stop it first, or delete with force';
    if ((to === 'running' || to === 'paused' || to === 'stopping') && (from === 'created' || from === 'stopped')) return 'start it first';
    if (to === 'running' && from === 'paused') return 'resume it first';
  } else if (to === 'deleted' && (from === 'running' || from === 'paused')) {
    return 'kill it first, or delete with force';
  } else if (from === 'paused' && to === 'running') {
    return 'resume it first';
  }
  return undefined;
}

/**
 * The {@link InvalidStateError} of a call in the wrong state, in a user's terms: the operation,
 * the object, its state and (with a `hint`, or one that goes without saying) what to do:
 * `cannot delete sandbox "web": it is running; stop it first, or delete with force`. With
 * `action` (a call that needs state `to` rather than going to it):
 * `container "c" in sandbox "web" has exited: exec needs it running`.
 */
export function stateError(kind: 'sandbox' | 'container', object: string, from: string, to: string, options: { action?: string; hint?: string } = {}): InvalidStateError {
  const hint = options.hint ?? defaultHint(kind, from, to);
  const message =
    options.action === undefined
      ? `cannot ${OPERATIONS[kind][to] ?? `go to "${to}" with`} ${object}: it ${stateWords(kind, from)}`
      : `${object} ${stateWords(kind, from)}: ${options.action} needs it ${to}`;
  return new InvalidStateError(object, from, to, { message, ...(hint === undefined ? {} : { hint }), ...(options.action === undefined ? {} : { action: options.action }) });
}

/** Throws {@link InvalidStateError} unless `from -> to` is legal for `object` (e.g. `sandbox "web"`); see {@link stateError}. */
export function assertTransition(kind: 'sandbox', object: string, from: SandboxState, to: SandboxState, hint?: string): void;
export function assertTransition(kind: 'container', object: string, from: ContainerState, to: ContainerState, hint?: string): void;
export function assertTransition(kind: 'sandbox' | 'container', object: string, from: string, to: string, hint?: string): void {
  const table: Readonly<Record<string, readonly string[]>> = kind === 'sandbox' ? SANDBOX_TRANSITIONS : CONTAINER_TRANSITIONS;
  if (!table[from]?.includes(to)) throw stateError(kind, object, from, to, hint === undefined ? {} : { hint });
}
