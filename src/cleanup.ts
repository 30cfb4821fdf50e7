/**
 * The one way vmpod undoes several things: every step is tried, whatever the others did, and every
 * failure is kept. A cleanup that stops at its first failure leaves the rest behind; one that
 * keeps only the first failure hides what else is left.
 *
 * @module
 */

/** Several cleanup steps failed; `errors` has each failure, `cause` the first. */
export class CleanupError extends AggregateError {
  /** Stable machine-readable code. */
  readonly code = 'ERR_VMPOD_CLEANUP';

  constructor(errors: readonly unknown[], message: string) {
    super(errors, `${message}: ${errors.map((e) => (e instanceof Error ? e.message : String(e))).join('; ')}`, { cause: errors[0] });
  }

  override get name(): string {
    return 'CleanupError';
  }
}

/** A step of a cleanup: what it is (for the message) and what it does. */
export type CleanupStep = readonly [label: string, run: () => unknown];

/**
 * Runs every step in order, each even when an earlier one failed; throws a {@link CleanupError}
 * with all the failures (each labelled) when any failed.
 */
export async function runAll(steps: Iterable<CleanupStep>, message = 'cleanup failed'): Promise<void> {
  const failures: unknown[] = [];
  for (const [label, run] of steps) {
    try {
      await run();
    } catch (error) {
      failures.push(labelled(label, error));
    }
  }
  if (failures.length > 0) throw new CleanupError(failures, message);
}

/**
 * For a cleanup whose steps are not a plain list (nested, or decided as it goes): throws the one
 * failure as it is, or a {@link CleanupError} with all of them; nothing when there is none.
 */
export function throwFailures(failures: readonly unknown[], message: string): void {
  if (failures.length === 1) throw failures[0];
  if (failures.length > 1) throw new CleanupError(failures, message);
}

/** The error with a label in front of its message (a CleanupError's own failures are kept flat). */
function labelled(label: string, error: unknown): unknown {
  if (!(error instanceof Error) || label === '') return error;
  if (error.message.startsWith(`${label}: `)) return error;
  try {
    error.message = `${label}: ${error.message}`;
  } catch {
    // a frozen error: keep it as it is
  }
  return error;
}
