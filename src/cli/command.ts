/**
 * The shape of a CLI subcommand: its options, its help, and what it does.
 *
 * @internal
 * @module
 */
import type { CommandSpec, ParsedArgs } from './args.js';

export interface Command {
  /** Words that select it, e.g. `["guest", "build"]`. */
  readonly words: readonly string[];
  /** One line for `vmpod --help`. */
  readonly summary: string;
  /** Full usage text for `vmpod CMD --help`. */
  readonly usage: string;
  readonly spec: CommandSpec;
  /** Runs the command; resolves with the exit code. */
  run(args: ParsedArgs): Promise<number>;
}

/** `--json` and `--help`, accepted by every command. */
export const COMMON_OPTIONS = [
  { long: 'json', type: 'boolean' },
  { long: 'help', short: 'h', type: 'boolean' },
] as const;
