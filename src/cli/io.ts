/**
 * Output helpers of the CLI: one place that decides how results and errors are printed and
 * which exit code they give. What they print goes through {@link printable}: table cells, JSON
 * and error messages may carry text from a guest (container ids, a console tail).
 *
 * @internal
 * @module
 */
import { ExecFailedError, VmpodError } from '../errors.js';
import { printable, printableField, printableJson } from '../printable.js';

/** Exit code of a failure of vmpod itself (docker's convention: 125). */
export const EXIT_FAILURE = 125;
/** Exit code of a usage error. */
export const EXIT_USAGE = 2;
/** Exit code when the container's command exists but cannot be executed (docker, shells: 126). */
export const EXIT_CANNOT_EXECUTE = 126;
/** Exit code when the container's command is not found (docker, shells: 127). */
export const EXIT_NOT_FOUND = 127;

/** Thrown by commands for a usage mistake; printed with the command's usage. */
export class UsageError extends VmpodError {
  constructor(message: string) {
    super('ERR_VMPOD_USAGE', message);
  }
}

/** A table with aligned columns, one line per row; each cell made printable on one line. */
export function formatTable(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const cells = rows.map((r) => r.map(printableField));
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => (r[i] ?? '').length)));
  const line = (row: readonly string[]): string =>
    row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(widths[i]!))).join('   ').trimEnd();
  return [headers, ...cells].map((row) => `${line(row)}\n`).join('');
}

/** Prints a table with aligned columns (see {@link formatTable}). */
export function printTable(headers: readonly string[], rows: readonly (readonly string[])[]): void {
  process.stdout.write(formatTable(headers, rows));
}

/** Prints one JSON document on stdout (terminal-safe, see {@link printableJson}). */
export function printJson(value: unknown): void {
  process.stdout.write(`${printableJson(value, 2)}\n`);
}

/**
 * The text `reportError` prints for `error`: `vmpod: MESSAGE` and up to three `caused by:`
 * lines, or one JSON line. Made printable: a message may quote the guest (a console tail).
 */
export function formatError(error: unknown, json: boolean): string {
  if (json) {
    const e = error as { code?: unknown; message?: unknown };
    return `${printableJson({ error: { code: e.code ?? 'ERR_UNKNOWN', message: String(e.message ?? error) } })}\n`;
  }
  let message = `vmpod: ${error instanceof Error ? error.message : String(error)}`;
  let cause = error instanceof Error ? error.cause : undefined;
  for (let depth = 0; cause instanceof Error && depth < 3; depth++) {
    message += `\n  caused by: ${cause.message}`;
    cause = cause.cause;
  }
  const hint = (error as { hint?: unknown } | null)?.hint;
  if (typeof hint === 'string') message += `\n  ${hint}`;
  return `${printable(message)}\n`;
}

/**
 * The exit code of a command that failed with `error`, docker's convention: 2 for a usage error,
 * 127 when the container's command was not found, 126 when it cannot be executed, 125 for any
 * other failure of vmpod. (A process that ran exits with its own code, 128 + N when signal N
 * killed it: see shellExitCode.)
 */
export function exitCodeOf(error: unknown, usage = false): number {
  if (usage || error instanceof UsageError) return EXIT_USAGE;
  if (error instanceof ExecFailedError) return error.reason === 'not-found' ? EXIT_NOT_FOUND : EXIT_CANNOT_EXECUTE;
  return EXIT_FAILURE;
}

/**
 * Prints an error on stderr (with its code and causes) and returns the exit code to use (see
 * {@link exitCodeOf}): {@link EXIT_USAGE} for a {@link UsageError} or when `usage` says it is one.
 */
export function reportError(error: unknown, json: boolean, usage = false): number {
  process.stderr.write(formatError(error, json));
  return exitCodeOf(error, usage);
}
