/**
 * Output helpers of the CLI: one place that decides how results and errors are printed and
 * which exit code they give.
 *
 * @internal
 * @module
 */
import { VmpodError } from '../errors.js';

/** Exit code of a failure of vmpod itself (docker's convention: 125). */
export const EXIT_FAILURE = 125;
/** Exit code of a usage error. */
export const EXIT_USAGE = 2;

/** Thrown by commands for a usage mistake; printed with the command's usage. */
export class UsageError extends VmpodError {
  constructor(message: string) {
    super('ERR_VMPOD_USAGE', message);
  }
}

/** Prints a table with aligned columns. */
export function printTable(headers: readonly string[], rows: readonly (readonly string[])[]): void {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('   ').trimEnd();
  process.stdout.write(`${line(headers)}\n`);
  for (const row of rows) process.stdout.write(`${line(row)}\n`);
}

/** Prints one JSON document on stdout. */
export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/**
 * Prints an error on stderr (with its code and causes) and returns the exit code to use:
 * {@link EXIT_USAGE} for a {@link UsageError} or when `usage` says it is one.
 */
export function reportError(error: unknown, json: boolean, usage = false): number {
  const code = usage || error instanceof UsageError ? EXIT_USAGE : EXIT_FAILURE;
  if (json) {
    const e = error as { code?: unknown; message?: unknown };
    process.stderr.write(`${JSON.stringify({ error: { code: e.code ?? 'ERR_UNKNOWN', message: String(e.message ?? error) } })}\n`);
    return code;
  }
  let message = `vmpod: ${error instanceof Error ? error.message : String(error)}`;
  let cause = error instanceof Error ? error.cause : undefined;
  for (let depth = 0; cause instanceof Error && depth < 3; depth++) {
    message += `\n  caused by: ${cause.message}`;
    cause = cause.cause;
  }
  process.stderr.write(`${message}\n`);
  return code;
}
