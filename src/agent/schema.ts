/**
 * A small validator kit for messages from the guest: each schema checks a value taken from
 * `JSON.parse` and returns a fresh, typed copy holding only the declared fields (so extra keys,
 * including `__proto__`, never reach the caller). A mismatch throws {@link AgentProtocolError}
 * naming the field.
 *
 * @internal
 * @module
 */
import { printable, printableField } from '../printable.js';
import * as validate from '../validate.js';
import { AgentProtocolError } from './errors.js';

export type Schema<T> = (value: unknown, path: string) => T;

function fail(path: string, what: string): never {
  throw new AgentProtocolError(`${path || 'message'}: ${what}`);
}

export function str(maxLength = 65536): Schema<string> {
  return (v, path) => {
    if (typeof v !== 'string') fail(path, 'must be a string');
    if (v.length > maxLength) fail(path, `is longer than ${maxLength} characters`);
    return v;
  };
}

/**
 * A string of at most `maxLength` characters that prints as it is in a one-line field: no
 * control characters (escape sequences, newlines, tabs), bidi controls or lone surrogates
 * (whatever {@link printableField} would escape).
 */
export function text(maxLength = 4096): Schema<string> {
  const string = str(maxLength);
  return (v, path) => {
    const value = string(v, path);
    if (printableField(value) !== value) fail(path, 'contains control characters');
    return value;
  };
}

/**
 * Free text that is only ever shown (an error message): never refused for its content, but
 * defused ({@link printable}: control characters become visible escapes such as `\x1b`,
 * newlines stay) and cut to `maxLength` characters.
 */
export function message(maxLength = 4096): Schema<string> {
  return (v, path) => {
    if (typeof v !== 'string') fail(path, 'must be a string');
    // Cut before escaping, so that the work is bounded by maxLength whatever the guest sent.
    const cut = v.length > maxLength;
    let value = printable(cut ? v.slice(0, maxLength) : v);
    if (cut || value.length > maxLength) {
      value = value.slice(0, maxLength);
      const last = value.charCodeAt(value.length - 1);
      if (last >= 0xd800 && last <= 0xdbff) value = value.slice(0, -1); // half of a surrogate pair
      value += ' [truncated]';
    }
    return value;
  };
}

/** A container or exec id, by the rule the host applies to ids it is given (`validate.id`). */
export const id: Schema<string> = (v, path) => {
  try {
    return validate.id(v, path);
  } catch {
    return fail(path, 'must be a valid id (1-64 characters of [A-Za-z0-9_.-], starting with a letter or digit, without "..")');
  }
};

/** A guest path, by the rule the host applies to paths it is given (`validate.absolutePath`), at most `maxLength` characters. */
export function guestPath(maxLength = 4096): Schema<string> {
  const string = str(maxLength);
  return (v, path) => {
    const value = string(v, path);
    if (!value.startsWith('/') || value.includes('\0')) fail(path, 'must be an absolute path without NUL');
    return value;
  };
}

/** A network interface name, by the rule the host applies to names it is given (`validate.interfaceName`). */
export const interfaceName: Schema<string> = (v, path) => {
  try {
    return validate.interfaceName(v, path);
  } catch {
    return fail(path, "must be an interface name (1-15 bytes, no '/', ':', whitespace or NUL, not . or ..)");
  }
};

/** A string of at most `maxLength` characters that matches `pattern` (anchor it). */
export function matching(pattern: RegExp, what: string, maxLength = 4096): Schema<string> {
  const string = str(maxLength);
  return (v, path) => {
    const value = string(v, path);
    if (!pattern.test(value)) fail(path, `must be ${what}`);
    return value;
  };
}

export function oneOf<const T extends string>(values: readonly T[]): Schema<T> {
  return (v, path) => {
    if (typeof v !== 'string' || !(values as readonly string[]).includes(v)) fail(path, `must be one of ${values.join(', ')}`);
    return v as T;
  };
}

export function int(min = 0, max = Number.MAX_SAFE_INTEGER): Schema<number> {
  return (v, path) => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) fail(path, `must be an integer in [${min}, ${max}]`);
    return v;
  };
}

export function num(): Schema<number> {
  return (v, path) => {
    if (typeof v !== 'number' || !Number.isFinite(v)) fail(path, 'must be a finite number');
    return v;
  };
}

export const bool: Schema<boolean> = (v, path) => {
  if (typeof v !== 'boolean') fail(path, 'must be a boolean');
  return v;
};

/** `null` or a missing field become `null`. */
export function nullable<T>(schema: Schema<T>): Schema<T | null> {
  return (v, path) => (v === null || v === undefined ? null : schema(v, path));
}

export function array<T>(schema: Schema<T>, maxItems = 4096): Schema<T[]> {
  return (v, path) => {
    if (!Array.isArray(v)) fail(path, 'must be an array');
    if (v.length > maxItems) fail(path, `has more than ${maxItems} items`);
    return v.map((item, i) => schema(item, `${path}[${i}]`));
  };
}

type Shape = Record<string, Schema<unknown>>;
export type Infer<S extends Shape> = { [K in keyof S]: S[K] extends Schema<infer T> ? T : never };

export function object<S extends Shape>(shape: S): Schema<Infer<S>> {
  return (v, path) => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(path, 'must be an object');
    const out: Record<string, unknown> = {};
    for (const [key, schema] of Object.entries(shape)) {
      const value = Object.prototype.hasOwnProperty.call(v, key) ? (v as Record<string, unknown>)[key] : undefined;
      out[key] = schema(value, path ? `${path}.${key}` : key);
    }
    return out as Infer<S>;
  };
}
