/**
 * The lifecycle of a sandbox and of a container as checked state machines. Every transition
 * goes through {@link assertTransition}, so a call made in the wrong state fails with an
 * {@link InvalidStateError} naming both states instead of doing something half-way.
 *
 * @module
 */
import { InvalidStateError } from '../errors.js';

/**
 * States of a sandbox:
 * - `created`: config validated and persisted, nothing running yet;
 * - `running`: the VM runs and its agent answered;
 * - `paused`: the VM's vCPUs are stopped (QMP `stop`);
 * - `stopped`: the VM is gone (stopped on request, or it died); resources can be released;
 * - `deleted`: everything the sandbox created on the host is gone.
 */
export type SandboxState = 'created' | 'running' | 'paused' | 'stopped' | 'deleted';

const SANDBOX_TRANSITIONS: Readonly<Record<SandboxState, readonly SandboxState[]>> = {
  created: ['running', 'stopped', 'deleted'],
  running: ['paused', 'stopped'],
  paused: ['running', 'stopped'],
  stopped: ['running', 'deleted'],
  deleted: [],
};

/**
 * States of a container:
 * - `created`: the agent made its namespaces and rootfs; the process has not been started;
 * - `running`: its init process runs;
 * - `stopped`: its init process exited (the exit status is kept until delete);
 * - `deleted`: gone from the guest.
 */
export type ContainerState = 'created' | 'running' | 'stopped' | 'deleted';

const CONTAINER_TRANSITIONS: Readonly<Record<ContainerState, readonly ContainerState[]>> = {
  created: ['running', 'stopped', 'deleted'],
  running: ['stopped'],
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

/** Throws {@link InvalidStateError} unless `from -> to` is legal for `object` (e.g. `sandbox "web"`). */
export function assertTransition(kind: 'sandbox', object: string, from: SandboxState, to: SandboxState): void;
export function assertTransition(kind: 'container', object: string, from: ContainerState, to: ContainerState): void;
export function assertTransition(kind: 'sandbox' | 'container', object: string, from: string, to: string): void {
  const table: Readonly<Record<string, readonly string[]>> = kind === 'sandbox' ? SANDBOX_TRANSITIONS : CONTAINER_TRANSITIONS;
  if (!table[from]?.includes(to)) throw new InvalidStateError(object, from, to);
}
