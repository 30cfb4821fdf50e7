/**
 * Validators for networking inputs, on top of `src/validate.ts`. Each throws
 * {@link InvalidArgumentError} naming the field, before any syscall.
 *
 * @internal
 * @module
 */
import { InvalidArgumentError } from '../errors.js';
import * as validate from '../validate.js';

/** T with every optional property also accepting an explicit undefined. */
export type Loose<T> = { [K in keyof T]?: T[K] | undefined };

/** Smallest MTU the kernel accepts on Ethernet-like links (ETH_MIN_MTU). */
export const MIN_MTU = 68;
/** Largest MTU of the links vmpod creates (IP_MAX_MTU). */
export const MAX_MTU = 65535;
/** The kernel's MAX_TAP_QUEUES. */
export const MAX_QUEUES = 256;

/** An interface name to create: a valid name without '%' (which the kernel would expand). */
export function newInterfaceName(value: unknown, field: string): string {
  const name = validate.interfaceName(value, field);
  if (name.includes('%')) {
    throw new InvalidArgumentError(field, `interface name "${name}" contains '%' (a kernel name template); give the exact name`);
  }
  return name;
}

export function mtu(value: unknown, field: string): number {
  return validate.integer(value, field, MIN_MTU, MAX_MTU);
}

/** A u32 value (link group, table, metric, uid, gid). */
export function u32(value: unknown, field: string, min = 0): number {
  return validate.integer(value, field, min, 0xffffffff);
}

/** A MAC address to assign to a link: unicast (the kernel refuses multicast ones), not all zeros. */
export function unicastMac(value: unknown, field: string): string {
  const mac = validate.macAddress(value, field);
  if (parseInt(mac.slice(0, 2), 16) & 1) {
    throw new InvalidArgumentError(field, `${mac} is a multicast address; a link needs a unicast one`);
  }
  if (mac === '00:00:00:00:00:00') throw new InvalidArgumentError(field, 'the all-zero MAC address cannot be assigned');
  return mac;
}

export function boolean(value: unknown, field: string): boolean {
  if (typeof value !== 'boolean') throw new InvalidArgumentError(field, `${JSON.stringify(value)} is not a boolean`);
  return value;
}

/** One of `choices`. */
export function oneOf<T extends string>(value: unknown, field: string, choices: readonly T[]): T {
  if (typeof value !== 'string' || !(choices as readonly string[]).includes(value)) {
    throw new InvalidArgumentError(field, `${JSON.stringify(value)} is not one of ${choices.join(', ')}`);
  }
  return value as T;
}

/** An options object (or undefined, read as empty). */
export function options<T extends object>(value: T | undefined, field: string): Partial<T> {
  if (value === undefined) return {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new InvalidArgumentError(field, 'expected an options object');
  }
  return value;
}

/** Applies `check` when `value` is defined. */
export function optional<T>(value: unknown, check: (v: unknown) => T): T | undefined {
  return value === undefined ? undefined : check(value);
}

/** Throws unless every name in `names` (field -> name) is distinct. */
export function distinct(names: Record<string, string>): void {
  const seen = new Map<string, string>();
  for (const [field, name] of Object.entries(names)) {
    const other = seen.get(name);
    if (other !== undefined) throw new InvalidArgumentError(field, `"${name}" is also used for ${other}`);
    seen.set(name, field);
  }
}
