/**
 * IP addresses of links: `ip address add/delete/show`.
 *
 * @module
 */
import { AlreadyExistsError, InvalidArgumentError, NotFoundError } from '../errors.js';
import type { NativeAddress } from '../native.js';
import * as validate from '../validate.js';
import * as check from './check.js';
import { linkErrors } from './link.js';
import { netnsErrors, nsArg, type NetnsOption } from './netns.js';
import { callNative, combineErrorMaps } from '../native-call.js';

/** Address and route scopes, as `ip` names them. */
export type Scope = 'global' | 'site' | 'link' | 'host' | 'nowhere';
/** @internal */
export const SCOPES: Readonly<Record<Scope, number>> = { global: 0, site: 200, link: 253, host: 254, nowhere: 255 };
/** @internal */
export function scopeName(value: number): Scope | number {
  const found = (Object.keys(SCOPES) as Scope[]).find((k) => SCOPES[k] === value);
  return found ?? value;
}

export interface AddressOptions extends NetnsOption {
  /** `peer ADDRESS` (point-to-point). */
  peer?: string;
  /** `broadcast ADDRESS` (IPv4). */
  broadcast?: string;
  /** `scope SCOPE` (default: host for loopback addresses, global otherwise, as `ip`). */
  scope?: Scope;
  /** `nodad`: usable at once, no duplicate address detection (IPv6). */
  noDad?: boolean;
  /** `label LABEL` (IPv4). */
  label?: string;
  /** `ip address replace`: no error when the address is there already. */
  replace?: boolean;
}

/** An address as `ip address show` lists it. */
export interface Address {
  dev: string;
  index: number;
  family: 4 | 6;
  address: string;
  prefixLength: number;
  /** `address/prefixLength` */
  cidr: string;
  scope: Scope | number;
  /** IFA_F_* names: `permanent`, `tentative`, `nodad`, `deprecated`, ... */
  flags: string[];
  peer?: string;
  broadcast?: string;
  label?: string;
}

const FLAGS: ReadonlyArray<[number, string]> = [
  [0x01, 'secondary'],
  [0x02, 'nodad'],
  [0x04, 'optimistic'],
  [0x08, 'dadfailed'],
  [0x10, 'homeaddress'],
  [0x20, 'deprecated'],
  [0x40, 'tentative'],
  [0x80, 'permanent'],
  [0x100, 'managetempaddr'],
  [0x200, 'noprefixroute'],
  [0x400, 'mcautojoin'],
  [0x800, 'stable-privacy'],
];

function toAddress(a: NativeAddress): Address {
  const out: Address = {
    dev: a.dev,
    index: a.index,
    family: a.family,
    address: a.address,
    prefixLength: a.prefixLength,
    cidr: `${a.address}/${a.prefixLength}`,
    scope: scopeName(a.scope),
    flags: FLAGS.filter(([bit]) => (a.flags & bit) !== 0).map(([, n]) => n),
  };
  if (a.peer !== undefined) out.peer = a.peer;
  if (a.broadcast !== undefined) out.broadcast = a.broadcast;
  if (a.label !== undefined) out.label = a.label;
  return out;
}

function isLoopback(address: string, family: 4 | 6): boolean {
  return family === 4 ? address.startsWith('127.') : address === '::1';
}

function spec(dev: string, cidr: string, o: Partial<AddressOptions>) {
  const name = validate.interfaceName(dev, 'dev');
  const c = validate.cidr(cidr, 'address');
  const other = (value: unknown, field: string): string => {
    const ip = validate.ipAddress(value, field);
    if ((ip.includes(':') ? 6 : 4) !== c.family) throw new InvalidArgumentError(field, `${ip} is not an IPv${c.family} address like ${cidr}`);
    return ip;
  };
  const label = check.optional(o.label, (v) => {
    if (typeof v !== 'string' || v.length === 0 || Buffer.byteLength(v) > 15 || /[\s/\0]/u.test(v)) {
      throw new InvalidArgumentError('label', `${JSON.stringify(v)} is not a valid label (1-15 bytes, no whitespace or '/')`);
    }
    return v;
  });
  const scope = o.scope === undefined ? (isLoopback(c.address, c.family) ? SCOPES.host : SCOPES.global) : SCOPES[check.oneOf(o.scope, 'scope', Object.keys(SCOPES) as Scope[])];
  return {
    dev: name,
    family: c.family,
    address: c.address,
    prefixLength: c.prefixLength,
    peer: check.optional(o.peer, (v) => other(v, 'peer')),
    broadcast: check.optional(o.broadcast, (v) => other(v, 'broadcast')),
    scope,
    noDad: check.optional(o.noDad, (v) => check.boolean(v, 'noDad')),
    label,
  };
}

/**
 * Adds an address: `ip [-n NS] address add|replace ADDRESS/PREFIX dev DEV [peer P] [broadcast B]
 * [scope S] [nodad] [label L]`.
 *
 * @throws {@link AlreadyExistsError} when the link has it already (unless `replace`),
 *   {@link NotFoundError} when there is no such link.
 */
export async function addAddress(dev: string, cidr: string, options?: AddressOptions): Promise<void> {
  const o = check.options(options, 'options');
  const s = spec(dev, cidr, o);
  const replace = check.boolean(o.replace ?? false, 'replace');
  const ns = nsArg(o.netns);
  await callNative(
    (n) => n.addrAdd(ns, s, replace),
    combineErrorMaps((e, system) => (e.code === 'EEXIST' ? new AlreadyExistsError('address', `${cidr} on ${s.dev}`, { cause: system }) : undefined), linkErrors(s.dev)),
  );
}

/**
 * Removes an address: `ip [-n NS] address delete ADDRESS/PREFIX dev DEV`.
 *
 * @throws {@link NotFoundError} when the link does not have it, or there is no such link.
 */
export async function deleteAddress(dev: string, cidr: string, options?: NetnsOption): Promise<void> {
  const o = check.options(options, 'options');
  const { scope: _scope, ...s } = spec(dev, cidr, {});
  const ns = nsArg(o.netns);
  await callNative(
    (n) => n.addrDelete(ns, s),
    combineErrorMaps((e, system) => (e.code === 'EADDRNOTAVAIL' ? new NotFoundError('address', `${cidr} on ${s.dev}`, { cause: system }) : undefined), linkErrors(s.dev)),
  );
}

/** Addresses of the namespace, or of one link: `ip [-n NS] address show [dev DEV]`. */
export async function listAddresses(options?: NetnsOption & { dev?: string; family?: 4 | 6 }): Promise<Address[]> {
  const o = check.options(options, 'options');
  const dev = check.optional(o.dev, (v) => validate.interfaceName(v, 'dev'));
  const family = check.optional(o.family, (v) => Number(check.oneOf(String(v), 'family', ['4', '6'])));
  const ns = nsArg(o.netns);
  const all = await callNative((n) => n.addrList(ns), netnsErrors);
  return all.filter((a) => (dev === undefined || a.dev === dev) && (family === undefined || a.family === family)).map(toAddress);
}
