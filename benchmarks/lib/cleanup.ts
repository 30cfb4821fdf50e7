/**
 * Cleanup for benchmarks: steps registered as things are made, run last-in first-out when the
 * benchmark ends, fails, or is interrupted (Ctrl-C, SIGTERM). Each step is tried even when an
 * earlier one fails.
 *
 * On the first signal the benchmark's {@link Cleanup.signal} aborts, so the call in flight
 * unwinds (nothing new is started behind the cleanup's back) and the steps run once it has; a
 * second signal, or a benchmark that does not unwind within 20 s, runs them at once and exits.
 */

type Step = { what: string; run: () => Promise<unknown> | unknown };

/** Registered cleanup steps, and the abort signal of an interrupted run. */
export class Cleanup {
  readonly #steps: Step[] = [];
  readonly #abort = new AbortController();
  #running: Promise<void> | undefined;

  /** Aborted when the benchmark is interrupted: pass it to long calls. */
  get signal(): AbortSignal {
    return this.#abort.signal;
  }

  /** Registers a step; the returned function unregisters it (when the thing was removed normally). */
  add(what: string, run: () => Promise<unknown> | unknown): () => void {
    const step = { what, run };
    this.#steps.push(step);
    return () => {
      const i = this.#steps.indexOf(step);
      if (i >= 0) this.#steps.splice(i, 1);
    };
  }

  /** @internal Aborts the run (a signal arrived). */
  interrupt(reason: string): void {
    this.#abort.abort(new Error(reason));
  }

  /** Runs every step, last first; failures are reported on stderr, not thrown. */
  run(): Promise<void> {
    this.#running ??= (async () => {
      while (this.#steps.length > 0) {
        const step = this.#steps.pop()!;
        try {
          await step.run();
        } catch (error) {
          process.stderr.write(`cleanup: ${step.what}: ${(error as Error).message}\n`);
        }
      }
    })();
    return this.#running;
  }
}

/** Runs `fn` with a {@link Cleanup} whose steps run however `fn` ends. */
export async function withCleanup<T>(fn: (cleanup: Cleanup) => Promise<T>): Promise<T> {
  const cleanup = new Cleanup();
  let signalled: NodeJS.Signals | undefined;
  let force: NodeJS.Timeout | undefined;
  const forced = async (): Promise<never> => {
    await cleanup.run();
    process.exit(130);
  };
  const onSignal = (sig: NodeJS.Signals): void => {
    if (signalled !== undefined) {
      void forced();
      return;
    }
    signalled = sig;
    process.stderr.write(`\n${sig}: stopping and cleaning up (again to force)\n`);
    cleanup.interrupt(`interrupted by ${sig}`);
    force = setTimeout(() => void forced(), 20_000);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    return await fn(cleanup);
  } finally {
    await cleanup.run();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    clearTimeout(force);
    if (signalled !== undefined) process.exit(130);
  }
}
