/**
 * QEMU's option syntax (`-device driver,key=value,...`, `-chardev`, `-netdev`, `-object`,
 * `-blockdev`): a `,` inside a value must be doubled, and nothing may contain control
 * characters. Every value from a config goes through {@link optionValue}.
 *
 * @internal
 * @module
 */
import { InvalidArgumentError } from '../../errors.js';

/** Escapes one option value: doubles `,`, rejects control characters (a newline would corrupt logs and QMP). */
export function optionValue(value: string | number | boolean, field: string): string {
  if (typeof value === 'boolean') return value ? 'on' : 'off';
  const text = String(value);
  if (/[\x00-\x1f\x7f]/u.test(text)) {
    throw new InvalidArgumentError(field, `${JSON.stringify(text)} contains control characters`);
  }
  return text.replaceAll(',', ',,');
}

/** A list of `key=value` pairs; `undefined` values are left out. */
export type OptionList = readonly (readonly [string, string | number | boolean | undefined])[];

/** `first,key=value,...` with every value escaped; `first` is the driver/backend/type. */
export function optionString(first: string, options: OptionList, field: string): string {
  const parts = [optionValue(first, field)];
  for (const [key, value] of options) {
    if (value !== undefined) parts.push(`${key}=${optionValue(value, `${field}.${key}`)}`);
  }
  return parts.join(',');
}
