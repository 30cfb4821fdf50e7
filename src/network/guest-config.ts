/**
 * What the guest gets of a sandbox's network: for each endpoint, the interface as the scan of
 * the namespace shows it (name, MAC, MTU, addresses, routes) turned into the agent's
 * `ConfigureInterface` request; and the DNS settings merged from the CNI results, the sandbox
 * config and the host. Pure functions, so that what is mirrored (and what is not) is testable.
 *
 * @module
 */
import net from 'node:net';
import { readFileSync } from 'node:fs';
import type { GuestNeighbor, GuestRoute, NetworkConfigRequest } from '../agent/network.js';
import type { CniDns } from './cni/result.js';
import type { Interface } from './scan.js';
import { MAIN_TABLE, type Route } from './route.js';

/** One guest interface, as the agent's ConfigureInterface takes it. */
export interface GuestInterface {
  name: string;
  mac: string;
  mtu: number;
  /** `ADDRESS/PREFIX` */
  addresses: string[];
  routes: GuestRoute[];
  neighbors: GuestNeighbor[];
}

/** Per-interface settings that replace what the scan found. */
export interface GuestOverrides {
  addresses?: string[];
  routes?: GuestRoute[];
  neighbors?: GuestNeighbor[];
}

/** True for IPv6 link-local addresses (fe80::/10): each side makes its own. */
function isLinkLocal6(address: string): boolean {
  return /^fe[89ab][0-9a-f]:/iu.test(address);
}

/**
 * The addresses the guest takes over: global (and site) scope ones. Link-local IPv6 addresses
 * are not copied (the guest derives the same from the same MAC), nor host-scope ones.
 */
export function mirroredAddresses(iface: Interface): string[] {
  return iface.addresses.filter((a) => (a.scope === 'global' || a.scope === 'site') && !isLinkLocal6(a.address)).map((a) => a.cidr);
}

/**
 * The routes the guest takes over: unicast routes through the interface that someone installed
 * (a CNI plugin, a user). Left out: the kernel's own (`proto kernel`: prefix routes of addresses,
 * which the guest kernel makes itself), multicast/local/broadcast ones, link-local IPv6 and
 * multipath routes (not expressible per interface).
 */
export function mirroredRoutes(iface: Interface): GuestRoute[] {
  const out: GuestRoute[] = [];
  for (const r of iface.routes) {
    if (r.protocol === 'kernel' || r.type !== 'unicast' || r.multipath) continue;
    if (r.family === 6 && (r.dst.startsWith('fe80:') || r.dst.startsWith('ff'))) continue;
    out.push(guestRoute(r));
  }
  return out;
}

function guestRoute(r: Route): GuestRoute {
  const route: GuestRoute = { dst: r.dst };
  if (r.dst === 'default') route.family = r.family;
  if (r.gateway !== undefined) route.gateway = r.gateway;
  if (r.src !== undefined) route.src = r.src;
  if (r.metric !== undefined && r.metric !== 0) route.metric = r.metric;
  if (r.table !== MAIN_TABLE) route.table = r.table;
  // The guest's default scope is the same rule (link without gateway for IPv4): only say others.
  const defaultScope = r.family === 4 && r.gateway === undefined ? 'link' : 'global';
  if (typeof r.scope === 'string' && r.scope !== defaultScope && (r.scope === 'global' || r.scope === 'link' || r.scope === 'host')) route.scope = r.scope;
  if (r.onlink) route.onlink = true;
  return route;
}

/**
 * The neighbours the guest takes over: the namespace's permanent entries on the interface that
 * have a link-layer address (someone pinned them: a gateway's MAC, a peer without ARP).
 */
export function mirroredNeighbors(iface: Interface): GuestNeighbor[] {
  return (iface.neighbors ?? []).filter((n) => n.mac !== undefined && n.states.includes('permanent')).map((n) => ({ ip: n.address, mac: n.mac! }));
}

/**
 * The guest interface of an endpoint: the scanned interface's name, the MAC and MTU the guest NIC
 * keeps, its addresses (unless `mirrorAddresses` is false: a tap's addresses are the host's
 * side), routes and permanent neighbours, with `overrides` replacing any of them.
 */
export function guestInterface(
  iface: Interface,
  nic: { mac: string; mtu: number },
  options: { mirrorAddresses: boolean; overrides?: GuestOverrides | undefined },
): GuestInterface {
  const o = options.overrides ?? {};
  return {
    name: iface.name,
    mac: nic.mac,
    mtu: nic.mtu,
    addresses: o.addresses ?? (options.mirrorAddresses ? mirroredAddresses(iface) : []),
    routes: o.routes ?? (options.mirrorAddresses ? mirroredRoutes(iface) : []),
    neighbors: o.neighbors ?? (options.mirrorAddresses ? mirroredNeighbors(iface) : []),
  };
}

/** DNS settings of the sandbox, as its containers' /etc/resolv.conf will hold them. */
export interface SandboxDns {
  nameservers: string[];
  search: string[];
  options: string[];
  domain?: string;
}

function unique<T>(values: readonly T[]): T[] {
  return [...new Set(values)];
}

/**
 * Merges DNS settings, first given first: the sandbox config's `dns`, then each CNI result's
 * `dns`. When none of them names a nameserver, the host's /etc/resolv.conf is used (without
 * loopback nameservers, which mean nothing in the guest), as Docker does.
 */
export function mergeDns(sources: readonly (CniDns | undefined)[], hostResolvConf?: string): SandboxDns {
  const dns: SandboxDns = { nameservers: [], search: [], options: [] };
  for (const s of sources) {
    if (!s) continue;
    dns.nameservers.push(...(s.nameservers ?? []));
    dns.search.push(...(s.search ?? []));
    dns.options.push(...(s.options ?? []));
    if (dns.domain === undefined && s.domain !== undefined && s.domain !== '') dns.domain = s.domain;
  }
  if (dns.nameservers.length === 0 && hostResolvConf !== undefined) {
    const host = parseResolvConf(hostResolvConf);
    dns.nameservers = host.nameservers.filter((ip) => !ip.startsWith('127.') && ip !== '::1');
    if (dns.search.length === 0) dns.search = host.search;
    if (dns.options.length === 0) dns.options = host.options;
    if (dns.domain === undefined && host.domain !== undefined) dns.domain = host.domain;
  }
  return { ...dns, nameservers: unique(dns.nameservers), search: unique(dns.search), options: unique(dns.options) };
}

/** The parts of a resolv.conf vmpod carries over (`nameserver`, `search`, `domain`, `options`). */
export function parseResolvConf(text: string): SandboxDns {
  const dns: SandboxDns = { nameservers: [], search: [], options: [] };
  for (const raw of text.split('\n')) {
    const [key, ...words] = raw.replace(/[#;].*$/u, '').trim().split(/\s+/u);
    if (key === 'nameserver' && words[0] !== undefined && net.isIP(words[0]) !== 0) dns.nameservers.push(words[0]);
    else if (key === 'search') dns.search = words.filter((w) => /^[A-Za-z0-9_.-]{1,253}$/u.test(w));
    else if (key === 'domain' && words[0] !== undefined && /^[A-Za-z0-9_.-]{1,253}$/u.test(words[0])) dns.domain = words[0];
    else if (key === 'options') dns.options.push(...words.filter((w) => /^[A-Za-z0-9:._-]{1,64}$/u.test(w)));
  }
  return dns;
}

/** The host's /etc/resolv.conf, or undefined when there is none. */
export function hostResolvConf(file = '/etc/resolv.conf'): string | undefined {
  try {
    return readFileSync(file, 'utf8').slice(0, 64 * 1024);
  } catch {
    return undefined;
  }
}

/** The agent's SetNetworkConfig request. */
export function networkConfigRequest(hostname: string, dns: SandboxDns, hosts: readonly { ip: string; names: string[] }[]): NetworkConfigRequest {
  const request: NetworkConfigRequest = {
    hostname,
    dns: { nameservers: dns.nameservers, search: dns.search, options: dns.options },
    hosts: hosts.map((h) => ({ ip: h.ip, names: [...h.names] })),
  };
  if (dns.domain !== undefined) request.dns!.domain = dns.domain;
  return request;
}
