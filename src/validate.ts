/**
 * Validators for every user input that reaches a syscall, a command line or a path. Each
 * returns the value (normalised where that helps) or throws {@link InvalidArgumentError}
 * naming the field and what is wrong with it. Nothing here has side effects.
 *
 * @module
 */
import net from 'node:net';
import path from 'node:path';
import { InvalidArgumentError } from './errors.js';

/** Linux IFNAMSIZ - 1. */
export const MAX_IFNAME_LENGTH = 15;

/** Checks a network interface name as the kernel's `dev_valid_name()` would, before any syscall. */
export function interfaceName(value: unknown, field = 'name'): string {
  if (typeof value !== 'string' || value.length === 0) {
    throw new InvalidArgumentError(field, 'an interface name must be a non-empty string');
  }
  const bytes = Buffer.byteLength(value);
  if (bytes > MAX_IFNAME_LENGTH) {
    throw new InvalidArgumentError(field, `interface name "${value}" is ${bytes} bytes long (max length is ${MAX_IFNAME_LENGTH})`);
  }
  if (value === '.' || value === '..') {
    throw new InvalidArgumentError(field, `"${value}" is not a valid interface name`);
  }
  if (/[/:\s\0]/u.test(value)) {
    throw new InvalidArgumentError(field, `interface name "${value}" contains '/', ':', whitespace or NUL`);
  }
  return value;
}

/** A network namespace name as used by `ip netns`: a single path component under /run/netns. */
export function netnsName(value: unknown, field = 'netns'): string {
  if (typeof value !== 'string' || value.length === 0) {
    throw new InvalidArgumentError(field, 'a namespace name must be a non-empty string');
  }
  if (value === '.' || value === '..' || value.includes('/') || value.includes('\0')) {
    throw new InvalidArgumentError(field, `namespace name "${value}" must not contain '/' or NUL, nor be "." or ".."`);
  }
  if (Buffer.byteLength(value) > 255) {
    throw new InvalidArgumentError(field, 'namespace name is longer than 255 bytes');
  }
  return value;
}

const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/u;

/** A sandbox or container id: 1-64 characters of [A-Za-z0-9_.-], starting with a letter or digit. */
export function id(value: unknown, field = 'id'): string {
  if (typeof value !== 'string' || !ID_PATTERN.test(value) || value.includes('..')) {
    throw new InvalidArgumentError(
      field,
      `${JSON.stringify(value)} is not a valid id: use 1-64 characters of [A-Za-z0-9_.-], starting with a letter or digit, without ".."`,
    );
  }
  return value;
}

/** A unicast or multicast Ethernet address; returned in lower case `aa:bb:cc:dd:ee:ff` form. */
export function macAddress(value: unknown, field = 'mac'): string {
  if (typeof value !== 'string' || !/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/u.test(value)) {
    throw new InvalidArgumentError(field, `${JSON.stringify(value)} is not a MAC address (expected aa:bb:cc:dd:ee:ff)`);
  }
  return value.toLowerCase();
}

/** An IPv4 or IPv6 address without prefix. */
export function ipAddress(value: unknown, field = 'address'): string {
  if (typeof value !== 'string' || net.isIP(value) === 0) {
    throw new InvalidArgumentError(field, `${JSON.stringify(value)} is not an IPv4 or IPv6 address`);
  }
  return value;
}

/** An address with prefix length, e.g. `10.0.0.2/24` or `fd00::2/64`. */
export interface Cidr {
  address: string;
  prefixLength: number;
  family: 4 | 6;
}

/** Parses `ADDRESS/PREFIX` (the prefix is required). */
export function cidr(value: unknown, field = 'address'): Cidr {
  if (typeof value !== 'string') {
    throw new InvalidArgumentError(field, `${JSON.stringify(value)} is not an address in ADDRESS/PREFIX form`);
  }
  const slash = value.indexOf('/');
  const address = slash < 0 ? value : value.slice(0, slash);
  const family = net.isIP(address);
  const prefixText = slash < 0 ? '' : value.slice(slash + 1);
  const prefixLength = /^\d{1,3}$/u.test(prefixText) ? Number(prefixText) : NaN;
  if (family === 0 || !(prefixLength >= 0 && prefixLength <= (family === 4 ? 32 : 128))) {
    throw new InvalidArgumentError(field, `${JSON.stringify(value)} is not an address in ADDRESS/PREFIX form`);
  }
  return { address, prefixLength, family: family as 4 | 6 };
}

/** A PCI address in full `DDDD:BB:DD.F` form, as sysfs names devices. */
export function pciAddress(value: unknown, field = 'pciAddress'): string {
  if (typeof value !== 'string' || !/^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$/u.test(value.toLowerCase())) {
    throw new InvalidArgumentError(field, `${JSON.stringify(value)} is not a PCI address (expected DDDD:BB:DD.F, e.g. 0000:3b:00.1)`);
  }
  return value.toLowerCase();
}

/** An absolute, normalised path without NUL bytes. */
export function absolutePath(value: unknown, field = 'path'): string {
  if (typeof value !== 'string' || !path.isAbsolute(value) || value.includes('\0')) {
    throw new InvalidArgumentError(field, `${JSON.stringify(value)} is not an absolute path`);
  }
  return path.normalize(value);
}

/** An integer within [min, max]. */
export function integer(value: unknown, field: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    // NaN and the infinities as themselves (JSON.stringify makes null of them, which was never given).
    const shown = typeof value === 'number' ? String(value) : JSON.stringify(value);
    throw new InvalidArgumentError(field, `${shown} is not an integer in [${min}, ${max}]`);
  }
  return value;
}
