/**
 * The `network` part of a sandbox's config: where its interfaces come from (CNI networks, a scan
 * of its namespace), how each reaches the VM (inter-network model), and what the guest gets
 * besides (hostname, DNS, hosts). {@link resolveNetworkConfig} checks it without side effects;
 * {@link loadNetworkConfig} then reads the configuration files and asks the plugins (VERSION)
 * whether they exist and speak the network's CNI version, before the sandbox is recorded.
 *
 * @module
 */
import net from 'node:net';
import { InvalidArgumentError, NotFoundError } from '../errors.js';
import * as validate from '../validate.js';
import type { GuestNeighbor, GuestRoute } from '../agent/network.js';
import * as check from './check.js';
import { assertUniqueInterfaceNames } from './cni/attachment.js';
import { CniConfig, type JsonObject } from './cni/config.js';
import { CniRuntime } from './cni/runtime.js';
import { MODELS, type InterNetworkModel } from './endpoints/endpoint.js';
import type { GuestOverrides } from './guest-config.js';

/** One CNI network of a sandbox. */
export interface CniNetworkSpec {
  /** A `.conflist` or `.conf` file (read when the sandbox is created). */
  file?: string;
  /** Or the configuration itself: a configuration list object (as in a .conflist) or a {@link CniConfig}. */
  config?: object | CniConfig;
  /** `CNI_IFNAME`: the interface it makes (default `eth0`, `eth1`, ... in order). */
  ifName?: string;
  /** `CNI_ARGS` */
  args?: Record<string, string>;
  /** Capability arguments (`bandwidth`, `mac`, `ips`, `portMappings`, ...). */
  capabilityArgs?: Record<string, unknown>;
  /** Inter-network model of its interface (default: the sandbox's). */
  model?: InterNetworkModel;
}

/** Settings of one interface of the namespace, by name. */
export interface InterfaceSettings extends GuestOverrides {
  /** Inter-network model (veth, macvlan interfaces). */
  model?: InterNetworkModel;
}

/** Configuration of a sandbox's network (`SandboxConfig.network`). */
export interface SandboxNetworkConfig {
  /**
   * Adopt this namespace (a name under /run/netns or an absolute path, e.g. one a CNI runtime or
   * `ip netns add` made): vmpod plugs its interfaces but never deletes it. Default: vmpod creates
   * `vmpod-ID` and deletes it with the sandbox.
   */
  netns?: string;
  /** CNI networks added to the namespace, in order (one interface each). */
  cni?: CniNetworkSpec[];
  /**
   * Also plug interfaces found in the namespace (CNM-style: made by anyone before the sandbox
   * starts): `true` (default) for every veth, macvlan, tap and macvtap, `false` for none, or a
   * filter by name.
   */
  scan?: boolean | { include?: string[]; exclude?: string[] };
  /** Default inter-network model (default `tcfilter`). */
  model?: InterNetworkModel;
  /** Per-interface settings: model, and guest addresses/routes/neighbours replacing the mirrored ones. */
  interfaces?: Record<string, InterfaceSettings>;
  /** The guest's hostname (default: the sandbox id). */
  hostname?: string;
  /** DNS settings, before those of the CNI results (default, with none at all: the host's). */
  dns?: { nameservers?: string[]; search?: string[]; options?: string[]; domain?: string };
  /** Extra /etc/hosts entries of the containers. */
  hosts?: { ip: string; names: string[] }[];
  /** CNI plugin directories searched first (then /opt/cni/bin, /usr/lib/cni). */
  cniPluginDirs?: string[];
  /** CNI result cache (default: `cni/` in the sandbox's state folder). */
  cniCacheDir?: string;
  /** Limit of one plugin run (default 30000 ms). */
  cniTimeoutMs?: number;
}

/** One CNI network, checked: its configuration list (once loaded) and attachment parameters. */
export interface ResolvedCniNetwork {
  /** The configuration list (as `CniConfig.toJSON()`); absent until the file is loaded. */
  network?: JsonObject;
  file?: string;
  ifName: string;
  args?: [string, string][];
  capabilityArgs?: JsonObject;
  model?: InterNetworkModel;
}

/** A checked {@link SandboxNetworkConfig}, persisted with the sandbox. */
export interface ResolvedNetworkConfig {
  netns?: string;
  cni: ResolvedCniNetwork[];
  scan: false | { include?: string[]; exclude: string[] };
  model: InterNetworkModel;
  interfaces: Record<string, InterfaceSettings>;
  hostname?: string;
  dns?: { nameservers: string[]; search: string[]; options: string[]; domain?: string };
  hosts: { ip: string; names: string[] }[];
  cniPluginDirs: string[];
  cniCacheDir?: string;
  cniTimeoutMs?: number;
}

const KEYS = new Set(['netns', 'cni', 'scan', 'model', 'interfaces', 'hostname', 'dns', 'hosts', 'cniPluginDirs', 'cniCacheDir', 'cniTimeoutMs']);
const CNI_KEYS = new Set(['file', 'config', 'ifName', 'args', 'capabilityArgs', 'model']);
const INTERFACE_KEYS = new Set(['model', 'addresses', 'routes', 'neighbors']);
const ROUTE_KEYS = new Set(['dst', 'family', 'gateway', 'src', 'metric', 'table', 'scope', 'onlink', 'mtu']);
const NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}$/u;
const HOSTNAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/u;

function object(value: unknown, field: string, keys: Set<string>): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new InvalidArgumentError(field, 'must be an object');
  for (const key of Object.keys(value)) if (!keys.has(key)) throw new InvalidArgumentError(`${field}.${key}`, 'unknown field');
  return value as Record<string, unknown>;
}

function list(value: unknown, field: string, max: number): unknown[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new InvalidArgumentError(field, 'must be an array');
  if (value.length > max) throw new InvalidArgumentError(field, `has more than ${max} entries`);
  return value;
}

function strings(value: unknown, field: string, max: number, pattern: RegExp, what: string): string[] {
  return list(value, field, max).map((v, i) => {
    if (typeof v !== 'string' || !pattern.test(v)) throw new InvalidArgumentError(`${field}[${i}]`, `${JSON.stringify(v)} is not ${what}`);
    return v;
  });
}

function model(value: unknown, field: string): InterNetworkModel {
  return check.oneOf(value, field, MODELS);
}

/** An IP address as a number (IPv6 may end in dotted IPv4, as `::ffff:10.0.0.1`). */
function ipValue(address: string, family: 4 | 6): bigint {
  const v4 = (text: string): bigint => text.split('.').reduce((acc, part) => (acc << 8n) | BigInt(Number(part)), 0n);
  if (family === 4) return v4(address);
  let text = address;
  let tail: bigint | undefined;
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/u.exec(text);
  if (dotted) {
    tail = v4(dotted[1] as string);
    text = `${text.slice(0, dotted.index)}0:0`;
  }
  const [head = '', rest = ''] = text.split('::');
  const h = head ? head.split(':') : [];
  const t = text.includes('::') && rest ? rest.split(':') : [];
  const groups = [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  const value = groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g || '0', 16)), 0n);
  return tail === undefined ? value : (value & ~0xffffffffn) | tail;
}

/** True when `address/prefix` has bits set after the prefix (not a network address). */
export function hasHostBits(address: string, prefix: number, family: 4 | 6): boolean {
  const bits = BigInt(family === 4 ? 32 : 128);
  const host = (1n << (bits - BigInt(prefix))) - 1n;
  return (ipValue(address, family) & host) !== 0n;
}

/** A guest route as the agent takes it, checked. */
function route(value: unknown, field: string): GuestRoute {
  const r = object(value, field, ROUTE_KEYS);
  let family: 4 | 6 | undefined;
  let dst = 'default';
  if (r['dst'] !== 'default') {
    const c = validate.cidr(r['dst'], `${field}.dst`);
    if (hasHostBits(c.address, c.prefixLength, c.family)) {
      throw new InvalidArgumentError(`${field}.dst`, `${String(r['dst'])} has host bits set: a destination is a network address`);
    }
    family = c.family;
    dst = `${c.address}/${c.prefixLength}`;
  }
  const out: GuestRoute = { dst };
  for (const key of ['gateway', 'src'] as const) {
    if (r[key] === undefined) continue;
    const ip = validate.ipAddress(r[key], `${field}.${key}`);
    const f = net.isIP(ip) as 4 | 6;
    if (family !== undefined && f !== family) throw new InvalidArgumentError(`${field}.${key}`, `${ip} is not IPv${family} like the route`);
    family = f;
    out[key] = ip;
  }
  if (r['family'] !== undefined) {
    const f = Number(check.oneOf(String(r['family']), `${field}.family`, ['4', '6'])) as 4 | 6;
    if (family !== undefined && f !== family) throw new InvalidArgumentError(`${field}.family`, `the route is IPv${family}`);
    out.family = f;
  }
  if (r['metric'] !== undefined) out.metric = check.u32(r['metric'], `${field}.metric`);
  if (r['table'] !== undefined) {
    out.table = check.u32(r['table'], `${field}.table`, 1);
    if (out.table === 253 || out.table === 255) throw new InvalidArgumentError(`${field}.table`, 'the default and local tables are the kernel\'s');
  }
  if (r['scope'] !== undefined) out.scope = check.oneOf(r['scope'], `${field}.scope`, ['global', 'link', 'host'] as const);
  if (r['onlink'] !== undefined) out.onlink = check.boolean(r['onlink'], `${field}.onlink`);
  if (r['mtu'] !== undefined) out.mtu = check.mtu(r['mtu'], `${field}.mtu`);
  return out;
}

/** Checks the settings of one interface (model, guest addresses, routes, neighbours). */
export function resolveInterfaceSettings(value: unknown, field: string): InterfaceSettings {
  const o = object(value, field, INTERFACE_KEYS);
  const out: InterfaceSettings = {};
  if (o['model'] !== undefined) out.model = model(o['model'], `${field}.model`);
  if (o['addresses'] !== undefined) {
    out.addresses = list(o['addresses'], `${field}.addresses`, 64).map((a, i) => {
      const c = validate.cidr(a, `${field}.addresses[${i}]`);
      return `${c.address}/${c.prefixLength}`;
    });
  }
  if (o['routes'] !== undefined) out.routes = list(o['routes'], `${field}.routes`, 256).map((r, i) => route(r, `${field}.routes[${i}]`));
  if (o['neighbors'] !== undefined) {
    out.neighbors = list(o['neighbors'], `${field}.neighbors`, 256).map((n, i): GuestNeighbor => {
      const e = object(n, `${field}.neighbors[${i}]`, new Set(['ip', 'mac']));
      return { ip: validate.ipAddress(e['ip'], `${field}.neighbors[${i}].ip`), mac: check.unicastMac(e['mac'], `${field}.neighbors[${i}].mac`) };
    });
  }
  return out;
}

/** Checks one CNI network of a sandbox; `defaultIfName` when it names no interface. */
export function resolveCniNetwork(value: CniNetworkSpec, field: string, defaultIfName: string): ResolvedCniNetwork {
  const o = object(value, field, CNI_KEYS);
  const out: ResolvedCniNetwork = { ifName: validate.interfaceName(o['ifName'] ?? defaultIfName, `${field}.ifName`) };
  if ((o['file'] === undefined) === (o['config'] === undefined)) {
    throw new InvalidArgumentError(field, 'give either a file (.conflist or .conf) or a config object');
  }
  if (o['file'] !== undefined) out.file = validate.absolutePath(o['file'], `${field}.file`);
  else out.network = (o['config'] instanceof CniConfig ? o['config'] : CniConfig.fromObject(o['config'], `${field}.config`)).toJSON();
  if (o['args'] !== undefined) {
    const args = object(o['args'], `${field}.args`, new Set(Object.keys(o['args'] as object)));
    out.args = Object.entries(args).map(([k, v]) => {
      if (!/^[A-Za-z0-9_]{1,64}$/u.test(k) || typeof v !== 'string' || !/^[^;=\0\n\r]{0,1024}$/u.test(v)) {
        throw new InvalidArgumentError(`${field}.args.${k}`, 'CNI_ARGS are KEY=VALUE pairs: keys of [A-Za-z0-9_], values without ";", "=" or newlines');
      }
      return [k, v] as [string, string];
    });
  }
  if (o['capabilityArgs'] !== undefined) {
    const caps = object(o['capabilityArgs'], `${field}.capabilityArgs`, new Set(Object.keys(o['capabilityArgs'] as object)));
    out.capabilityArgs = JSON.parse(JSON.stringify(caps)) as JsonObject;
  }
  if (o['model'] !== undefined) out.model = model(o['model'], `${field}.model`);
  return out;
}

/**
 * Checks a sandbox's network config and fills in the defaults. No side effects (files are read
 * later, by {@link loadNetworkConfig}).
 *
 * @throws {@link InvalidArgumentError} naming the field: unknown fields, a bad namespace name or
 *   path, malformed or unsupported CNI configurations (`CniConfigError`), two networks asking for
 *   the same interface name, unknown models, bad addresses, routes, DNS names.
 */
export function resolveNetworkConfig(config: SandboxNetworkConfig, field = 'network'): ResolvedNetworkConfig {
  const o = object(config, field, KEYS);
  const resolved: ResolvedNetworkConfig = {
    cni: list(o['cni'], `${field}.cni`, 16).map((c, i) => resolveCniNetwork(c as CniNetworkSpec, `${field}.cni[${i}]`, `eth${i}`)),
    scan: { exclude: [] },
    model: o['model'] === undefined ? 'tcfilter' : model(o['model'], `${field}.model`),
    interfaces: {},
    hosts: [],
    cniPluginDirs: list(o['cniPluginDirs'], `${field}.cniPluginDirs`, 16).map((d, i) => validate.absolutePath(d, `${field}.cniPluginDirs[${i}]`)),
  };
  if (o['netns'] !== undefined) {
    const ns = o['netns'];
    resolved.netns = typeof ns === 'string' && ns.startsWith('/') ? validate.absolutePath(ns, `${field}.netns`) : validate.netnsName(ns, `${field}.netns`);
  }
  assertUniqueInterfaceNames(resolved.cni.map((c, i) => ({ network: c.network?.['name'] as string | undefined ?? c.file ?? `#${i}`, ifName: c.ifName })));
  const scan = o['scan'];
  if (scan === false) resolved.scan = false;
  else if (scan !== undefined && scan !== true) {
    const s = object(scan, `${field}.scan`, new Set(['include', 'exclude']));
    resolved.scan = { exclude: (s['exclude'] === undefined ? [] : list(s['exclude'], `${field}.scan.exclude`, 256)).map((n, i) => validate.interfaceName(n, `${field}.scan.exclude[${i}]`)) };
    if (s['include'] !== undefined) resolved.scan.include = list(s['include'], `${field}.scan.include`, 256).map((n, i) => validate.interfaceName(n, `${field}.scan.include[${i}]`));
  }
  if (o['interfaces'] !== undefined) {
    const interfaces = object(o['interfaces'], `${field}.interfaces`, new Set(Object.keys(o['interfaces'] as object)));
    for (const [name, settings] of Object.entries(interfaces)) {
      validate.interfaceName(name, `${field}.interfaces`);
      resolved.interfaces[name] = resolveInterfaceSettings(settings, `${field}.interfaces.${name}`);
    }
  }
  if (o['hostname'] !== undefined) {
    if (typeof o['hostname'] !== 'string' || !HOSTNAME.test(o['hostname'])) {
      throw new InvalidArgumentError(`${field}.hostname`, `${JSON.stringify(o['hostname'])} is not a hostname (1-64 of letters, digits, '-', '.', '_')`);
    }
    resolved.hostname = o['hostname'];
  }
  if (o['dns'] !== undefined) {
    const d = object(o['dns'], `${field}.dns`, new Set(['nameservers', 'search', 'options', 'domain']));
    resolved.dns = {
      nameservers: list(d['nameservers'], `${field}.dns.nameservers`, 16).map((n, i) => validate.ipAddress(n, `${field}.dns.nameservers[${i}]`)),
      search: strings(d['search'], `${field}.dns.search`, 32, NAME, 'a DNS domain'),
      options: strings(d['options'], `${field}.dns.options`, 32, /^[A-Za-z0-9:._-]{1,64}$/u, 'a resolver option (e.g. ndots:5)'),
    };
    if (d['domain'] !== undefined) resolved.dns.domain = strings([d['domain']], `${field}.dns.domain`, 1, NAME, 'a DNS domain')[0] as string;
  }
  resolved.hosts = list(o['hosts'], `${field}.hosts`, 256).map((h, i) => {
    const e = object(h, `${field}.hosts[${i}]`, new Set(['ip', 'names']));
    const names = strings(e['names'], `${field}.hosts[${i}].names`, 16, NAME, 'a host name');
    if (names.length === 0) throw new InvalidArgumentError(`${field}.hosts[${i}].names`, 'needs at least one name');
    return { ip: validate.ipAddress(e['ip'], `${field}.hosts[${i}].ip`), names };
  });
  if (o['cniCacheDir'] !== undefined) resolved.cniCacheDir = validate.absolutePath(o['cniCacheDir'], `${field}.cniCacheDir`);
  if (o['cniTimeoutMs'] !== undefined) resolved.cniTimeoutMs = validate.integer(o['cniTimeoutMs'], `${field}.cniTimeoutMs`, 1, 600_000);
  return resolved;
}

/**
 * Reads the CNI configuration files of a resolved config into it (`CniConfig.loadFile`), then
 * checks every network against its plugins, as libcni's `ValidateNetworkList`: each plugin (and
 * IPAM plugin) exists in the plugin directories and supports the network's CNI version (VERSION).
 *
 * @throws `CniConfigError` (malformed JSON, bad fields, unsupported version),
 *   `CniPluginNotFoundError` (unknown plugin), `CniVersionError` (a plugin does not speak the
 *   network's version), {@link InvalidArgumentError} (duplicate interface names).
 */
export async function loadNetworkConfig(config: ResolvedNetworkConfig, options: { signal?: AbortSignal } = {}): Promise<ResolvedNetworkConfig> {
  for (const network of config.cni) await loadCniNetwork(network, config.cniPluginDirs, options);
  assertUniqueInterfaceNames(config.cni.map((c) => ({ network: c.network?.['name'] as string, ifName: c.ifName })));
  return config;
}

/** Loads one network's file (when not loaded yet) and validates it against its plugins; returns its configuration. */
export async function loadCniNetwork(network: ResolvedCniNetwork, pluginDirs: readonly string[], options: { signal?: AbortSignal } = {}): Promise<CniConfig> {
  if (network.network === undefined && network.file !== undefined) {
    const file = network.file;
    const loaded = await CniConfig.loadFile(file).catch((error: unknown) => {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new NotFoundError('CNI configuration file', file, { cause: error });
      if (code === 'EISDIR' || code === 'EACCES') throw new InvalidArgumentError('file', `${file} cannot be read as a CNI configuration (${code})`, { cause: error });
      throw error;
    });
    network.network = loaded.toJSON();
  }
  const conf = CniConfig.fromObject(network.network, network.file);
  await new CniRuntime({ pluginDirs }).validate(conf, options.signal ? { signal: options.signal } : {});
  return conf;
}
