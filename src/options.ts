/**
 * The options every cancellable call of vmpod takes.
 *
 * @module
 */

/** Options of a call that can be cancelled and bounded. */
export interface CallOptions {
  /** Cancels the call; what it made so far is undone where the call says so. */
  readonly signal?: AbortSignal | undefined;
  /**
   * Gives up after this many milliseconds with a TimeoutError. Calls that wait for the guest or
   * the hypervisor have a default deadline of their own; this overrides it.
   */
  readonly timeoutMs?: number | undefined;
}
