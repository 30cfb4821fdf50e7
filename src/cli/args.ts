/**
 * A small argv parser for the vmpod CLI, docker-style: short flags group (`-it`), options may
 * take a value as `--name x` or `--name=x`, repeatable options collect into arrays, and option
 * parsing stops at `--` or, for commands such as `exec`, after the last fixed positional, so
 * that the container's own arguments (`ls -l`) are never taken for vmpod's.
 *
 * @internal
 * @module
 */
import { InvalidArgumentError } from '../errors.js';
import { UsageError } from './io.js';

/** One option of a command. */
export interface OptionSpec {
  /** Long name, without the dashes. */
  long: string;
  /** Single-letter alias. */
  short?: string;
  /** `boolean` flags take no value. */
  type: 'boolean' | 'string';
  /** Collect every occurrence into an array. */
  multiple?: boolean;
}

/** What a command accepts. */
export interface CommandSpec {
  options: readonly OptionSpec[];
  /**
   * Number of positionals after which option parsing stops and everything else is the
   * "rest" (the container command). `undefined` means: only `--` stops option parsing.
   */
  stopAfterPositionals?: number;
}

/** The parsed command line. */
export interface ParsedArgs {
  /** Values by long option name: `true` for flags, a string, or a string array for `multiple`. */
  options: Record<string, boolean | string | string[]>;
  /** Positionals before the rest. */
  positionals: string[];
  /** Everything after `--` (or after the fixed positionals). */
  rest: string[];
  /** True when a literal `--` was present. */
  sawSeparator: boolean;
}

/** Parses `argv` (without the command words) against `spec`; throws {@link InvalidArgumentError}. */
export function parseArgs(argv: readonly string[], spec: CommandSpec): ParsedArgs {
  const result: ParsedArgs = { options: {}, positionals: [], rest: [], sawSeparator: false };
  const byLong = new Map(spec.options.map((o) => [o.long, o]));
  const byShort = new Map(spec.options.filter((o) => o.short).map((o) => [o.short!, o]));

  const set = (option: OptionSpec, value: string | true): void => {
    if (option.multiple) {
      const list = (result.options[option.long] as string[] | undefined) ?? [];
      list.push(String(value));
      result.options[option.long] = list;
    } else {
      result.options[option.long] = value;
    }
  };

  let i = 0;
  const takeValue = (option: OptionSpec, flag: string): string => {
    const value = argv[++i];
    if (value === undefined) throw new InvalidArgumentError(flag, 'this option needs a value');
    return value;
  };

  for (; i < argv.length; i++) {
    const arg = argv[i]!;
    if (spec.stopAfterPositionals !== undefined && result.positionals.length >= spec.stopAfterPositionals) {
      // `exec ID -- CMD`: a separator right after the positionals is one, not the command.
      if (arg === '--') {
        result.sawSeparator = true;
        i++;
      }
      break;
    }
    if (arg === '--') {
      result.sawSeparator = true;
      i++;
      break;
    }
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      const name = arg.slice(2, eq < 0 ? undefined : eq);
      const option = byLong.get(name);
      if (!option) throw new InvalidArgumentError(`--${name}`, 'unknown option');
      if (option.type === 'boolean') {
        if (eq >= 0) throw new InvalidArgumentError(`--${name}`, 'this flag takes no value');
        set(option, true);
      } else {
        set(option, eq >= 0 ? arg.slice(eq + 1) : takeValue(option, `--${name}`));
      }
    } else if (arg.startsWith('-') && arg.length > 1) {
      const letters = arg.slice(1);
      for (let j = 0; j < letters.length; j++) {
        const option = byShort.get(letters[j]!);
        if (!option) throw new InvalidArgumentError(`-${letters[j]}`, 'unknown option');
        if (option.type === 'boolean') {
          set(option, true);
        } else if (j < letters.length - 1) {
          set(option, letters.slice(j + 1));
          break;
        } else {
          set(option, takeValue(option, `-${letters[j]}`));
        }
      }
    } else {
      result.positionals.push(arg);
    }
  }
  result.rest = argv.slice(i);
  return result;
}

// ASCII digits without a sign or a leading zero: what `Number()` and `parseInt` also take
// ("1e3", "0x100", " 12", "12abc", "", "Infinity", "-3") is not a count of anything.
const DECIMAL_INTEGER = /^(?:0|[1-9][0-9]*)$/u;

/**
 * The value of numeric option `name`: a plain decimal integer (digits only: no sign, no leading
 * zero, no spaces, exponent, fraction or hex) from `min` to `max`. Throws {@link UsageError}
 * naming the option, the value and the range; `hint` is added to the message (e.g. what the
 * range depends on).
 */
export function integerOption(name: string, value: string, min: number, max: number, hint?: string): number {
  // 16 digits is past every range here, and below 2^53, where Number() stops being exact.
  if (DECIMAL_INTEGER.test(value) && value.length <= 16) {
    const n = Number(value);
    if (n >= min && n <= max) return n;
  }
  throw new UsageError(`${name} ${JSON.stringify(value)}: expected a decimal integer from ${min} to ${max}${hint === undefined ? '' : ` (${hint})`}`);
}
