/**
 * CNI ADD results: validation of what a plugin printed (spec 1.x, and 0.3.x/0.4.0 whose `ips`
 * carry a `version`), and conversion to one typed model, the 1.x one.
 *
 * Plugin output is untrusted: every field is type-checked, addresses are parsed, and interface
 * indexes are bounds-checked. Unknown fields are kept in the raw result (which is what the next
 * plugin receives as `prevResult`) but not in the typed model.
 *
 * @module
 */
import net from 'node:net';
import { cidr } from '../../validate.js';
import { atLeast, compareVersions, isVersion } from './version.js';
import type { JsonObject } from './config.js';

/** An interface an attachment created (`interfaces[]`). */
export interface CniInterface {
  /** Its name: in the container's netns when `sandbox` is set, else on the host. */
  readonly name: string;
  /** Its hardware address, when L2 addresses are meaningful. */
  readonly mac?: string;
  /** Its MTU (1.1.0). */
  readonly mtu?: number;
  /** The netns path it lives in; absent for host interfaces. */
  readonly sandbox?: string;
  /** A socket bound to this interface, e.g. vhost-user (1.1.0). */
  readonly socketPath?: string;
  /** The PCI device behind it (1.1.0). */
  readonly pciID?: string;
}

/** An address an attachment assigned (`ips[]`). */
export interface CniIpConfig {
  /** Address with prefix length, e.g. `10.1.0.5/16`. */
  readonly address: string;
  /** The default gateway of the subnet, if there is one. */
  readonly gateway?: string;
  /** Index into `interfaces` of the interface that carries the address. */
  readonly interface?: number;
}

/** A route an attachment created (`routes[]`). */
export interface CniRoute {
  /** Destination in CIDR form, e.g. `0.0.0.0/0`. */
  readonly dst: string;
  /** Next hop; when absent a `gateway` of `ips` may be used. */
  readonly gw?: string;
  readonly mtu?: number;
  readonly advmss?: number;
  readonly priority?: number;
  readonly table?: number;
  /** 0 global, 253 link, 254 host. */
  readonly scope?: number;
}

/** DNS settings a network knows of (`dns`). */
export interface CniDns {
  readonly nameservers?: readonly string[];
  readonly domain?: string;
  readonly search?: readonly string[];
  readonly options?: readonly string[];
}

/**
 * The result of ADD, in the CNI 1.x model whatever version the plugin spoke: 0.3.x/0.4.0
 * results are converted (their per-address `version` is dropped, as libcni does).
 */
export interface CniResult {
  /** The model's version: `1.1.0` for 1.1.0 results, else `1.0.0`. */
  readonly cniVersion: string;
  /** The version the plugin's output was written in (e.g. `0.4.0`). */
  readonly sourceVersion: string;
  readonly interfaces: readonly CniInterface[];
  readonly ips: readonly CniIpConfig[];
  readonly routes: readonly CniRoute[];
  readonly dns: CniDns;
}

/** Why a result is invalid; the caller wraps it into a typed error that names the plugin. */
export class ResultFormatError extends Error {}

function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function fail(at: string, problem: string): never {
  throw new ResultFormatError(`${at}: ${problem}`);
}

function str(obj: JsonObject, key: string, at: string, required = false): string | undefined {
  const v = obj[key];
  if (v === undefined || (v === '' && !required)) {
    if (required) fail(`${at}.${key}`, 'is missing');
    return undefined;
  }
  if (typeof v !== 'string') fail(`${at}.${key}`, `must be a string, not ${JSON.stringify(v)}`);
  return v;
}

function uint(obj: JsonObject, key: string, at: string): number | undefined {
  const v = obj[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) fail(`${at}.${key}`, `must be an unsigned integer, not ${JSON.stringify(v)}`);
  return v;
}

function strings(obj: JsonObject, key: string, at: string): string[] | undefined {
  const v = obj[key];
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || v.some((s) => typeof s !== 'string')) fail(`${at}.${key}`, 'must be a list of strings');
  return v as string[];
}

function list(obj: JsonObject, key: string): unknown[] {
  const v = obj[key];
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) fail(key, 'must be a list');
  return v;
}

function ipString(obj: JsonObject, key: string, at: string): string | undefined {
  const v = str(obj, key, at);
  if (v !== undefined && net.isIP(v) === 0) fail(`${at}.${key}`, `${JSON.stringify(v)} is not an IP address`);
  return v;
}

function cidrString(obj: JsonObject, key: string, at: string): { text: string; family: 4 | 6 } {
  const v = str(obj, key, at, true) as string;
  try {
    return { text: v, family: cidr(v).family };
  } catch {
    return fail(`${at}.${key}`, `${JSON.stringify(v)} is not an address in ADDRESS/PREFIX form`);
  }
}

/** Copies the defined entries of `fields` (exactOptionalPropertyTypes wants no `undefined` values). */
function defined<T extends object>(fields: { [K in keyof T]: T[K] | undefined }): T {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(fields)) if (v !== undefined) out[k] = v;
  return out as T;
}

/** True for a result version vmpod can read: 0.3.0 and later up to 1.x. */
export function isReadableResultVersion(version: string): boolean {
  return isVersion(version) && atLeast(version, '0.3.0') && compareVersions(version, '2.0.0') < 0;
}

/**
 * Validates a plugin's ADD output and returns the raw object (with `cniVersion` filled in from
 * the configuration when the plugin left it out, as libcni does) and the typed 1.x model.
 *
 * @throws {@link ResultFormatError} describing the first problem.
 */
export function parseResult(value: unknown, configVersion: string): { raw: JsonObject; result: CniResult } {
  if (!isObject(value)) fail('result', 'must be a JSON object');
  const raw: JsonObject = { ...value };
  if (raw['cniVersion'] === undefined || raw['cniVersion'] === '') raw['cniVersion'] = configVersion;
  const version = raw['cniVersion'];
  if (!isVersion(version)) fail('cniVersion', `${JSON.stringify(version)} is not a version`);
  if (!isReadableResultVersion(version)) fail('cniVersion', `results of CNI ${version} are not supported (0.3.0 to 1.x are)`);
  const legacy = !atLeast(version, '1.0.0');

  const interfaces = list(raw, 'interfaces').map((v, i): CniInterface => {
    const at = `interfaces[${i}]`;
    if (!isObject(v)) fail(at, 'must be an object');
    const name = str(v, 'name', at, true) as string;
    if (name === '') fail(`${at}.name`, 'is empty');
    return defined<CniInterface>({
      name,
      mac: str(v, 'mac', at),
      mtu: legacy ? undefined : uint(v, 'mtu', at),
      sandbox: str(v, 'sandbox', at),
      socketPath: legacy ? undefined : str(v, 'socketPath', at),
      pciID: legacy ? undefined : str(v, 'pciID', at),
    });
  });

  const ips = list(raw, 'ips').map((v, i): CniIpConfig => {
    const at = `ips[${i}]`;
    if (!isObject(v)) fail(at, 'must be an object');
    const address = cidrString(v, 'address', at);
    if (legacy) {
      // 0.3.x/0.4.0 name the family; it must agree with the address.
      const family = v['version'];
      if (family !== '4' && family !== '6') fail(`${at}.version`, `must be "4" or "6", not ${JSON.stringify(family)}`);
      if (Number(family) !== address.family) fail(`${at}.version`, `"${family}" does not match address ${address.text}`);
    }
    const index = uint(v, 'interface', at);
    if (index !== undefined && index >= interfaces.length) {
      fail(`${at}.interface`, `index ${index} is out of range (${interfaces.length} interfaces)`);
    }
    const gateway = ipString(v, 'gateway', at);
    if (gateway !== undefined && net.isIP(gateway) !== address.family) fail(`${at}.gateway`, `${gateway} is not of the address's family`);
    return defined<CniIpConfig>({ address: address.text, gateway, interface: index });
  });

  const routes = list(raw, 'routes').map((v, i): CniRoute => {
    const at = `routes[${i}]`;
    if (!isObject(v)) fail(at, 'must be an object');
    return defined<CniRoute>({
      dst: cidrString(v, 'dst', at).text,
      gw: ipString(v, 'gw', at),
      mtu: uint(v, 'mtu', at),
      advmss: uint(v, 'advmss', at),
      priority: uint(v, 'priority', at),
      table: uint(v, 'table', at),
      scope: uint(v, 'scope', at),
    });
  });

  let dns: CniDns = {};
  const rawDns = raw['dns'];
  if (rawDns !== undefined && rawDns !== null) {
    if (!isObject(rawDns)) fail('dns', 'must be an object');
    const nameservers = strings(rawDns, 'nameservers', 'dns');
    nameservers?.forEach((ns, i) => {
      if (net.isIP(ns) === 0) fail(`dns.nameservers[${i}]`, `${JSON.stringify(ns)} is not an IP address`);
    });
    dns = defined<CniDns>({
      nameservers,
      domain: str(rawDns, 'domain', 'dns'),
      search: strings(rawDns, 'search', 'dns'),
      options: strings(rawDns, 'options', 'dns'),
    });
  }

  const result: CniResult = {
    cniVersion: atLeast(version, '1.1.0') ? '1.1.0' : '1.0.0',
    sourceVersion: version,
    interfaces,
    ips,
    routes,
    dns,
  };
  return { raw, result: deepFreeze(result) };
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}
