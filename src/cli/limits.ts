/**
 * The ranges of the CLI's numeric options: the library's own limits, so that the CLI never
 * accepts a value the library would reject (docs/cli.md lists them).
 *
 * @internal
 * @module
 */

import { MAX_MEMORY_MIB, MIN_MEMORY_MIB } from '../sandbox/config.js';
import type { MachineProfile } from '../hypervisor/hypervisor.js';

/** An inclusive range of integers. */
export interface IntegerRange {
  readonly min: number;
  readonly max: number;
}

/** `run --cpus`: the sandbox config's `cpus`. */
export const CPUS: IntegerRange = { min: 1, max: 64 };
/** `run --memory` with machine type `machine`: the sandbox config's `memoryMiB`. */
export function memoryMiB(machine: MachineProfile): IntegerRange {
  return { min: MIN_MEMORY_MIB[machine], max: MAX_MEMORY_MIB };
}
/** `run --memory` of the default machine type (q35). */
export const MEMORY_MIB: IntegerRange = memoryMiB('q35');
/** Guest RAM without `--memory` (the sandbox config's default). */
export const DEFAULT_MEMORY_MIB = 256;
/** Guest RAM that hugepages reserved in the guest must leave to the rest of it. */
export const GUEST_RESERVED_MIB = 128;
/** Size of a guest hugepage. */
export const GUEST_HUGEPAGE_MIB = 2;

/** `run --guest-hugepages`: 2 MiB pages, as many as leave the guest 128 MiB of its RAM. */
export function guestHugepages(memoryMiB: number): IntegerRange {
  return { min: 1, max: Math.floor((memoryMiB - GUEST_RESERVED_MIB) / GUEST_HUGEPAGE_MIB) };
}

/**
 * `stop --timeout`, in seconds: 0 forces the VM off at once; the most is what a Node timer can
 * wait (2^31 - 1 ms; a longer delay would fire at once).
 */
export const STOP_TIMEOUT_S: IntegerRange = { min: 0, max: Math.floor((2 ** 31 - 1) / 1000) };

/** `kill SIGNAL` as a number: Linux signals, 1 to SIGRTMAX. */
export const SIGNAL_NUMBER: IntegerRange = { min: 1, max: 64 };

/** `--user UID[:GID]`: 32-bit ids except (uid_t)-1, which means "no change" to the kernel. */
export const USER_ID: IntegerRange = { min: 0, max: 2 ** 32 - 2 };
