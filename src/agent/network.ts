/**
 * The agent's networking methods (docs/agent-protocol.md, "Networking"): requests, results and
 * the schemas that check the results coming from the guest.
 *
 * @module
 */
import { AgentProtocolError } from './errors.js';
import { array, bool, int, interfaceName, matching, nullable, object, text, type Schema } from './schema.js';

/** A route the agent installs through one interface (`ip route replace ... dev NAME proto 118`). */
export interface GuestRoute {
  /** `default` or a network `ADDRESS/PREFIX` (host bits zero). */
  dst: string;
  /** Family of a `default` route without gateway (default 4). */
  family?: 4 | 6;
  /** `via GATEWAY` */
  gateway?: string;
  /** `src ADDRESS` (preferred source). */
  src?: string;
  /** `metric N` */
  metric?: number;
  /** `table N` (default main; not local or default). */
  table?: number;
  /** `scope S` (default link for an IPv4 route without gateway, else global). */
  scope?: 'global' | 'link' | 'host';
  /** `onlink`: the gateway is on the link even without a matching prefix. */
  onlink?: boolean;
  /** `mtu N` route metric. */
  mtu?: number;
}

/** A static neighbour entry (`ip neigh replace IP lladdr MAC dev NAME nud permanent`). */
export interface GuestNeighbor {
  ip: string;
  mac: string;
}

/**
 * ConfigureInterface: the guest NIC with `mac` gets `name`, `mtu`, exactly `addresses` (other
 * addresses go, IPv6 link-local ones stay), exactly `routes` among those the agent installed
 * through it, and exactly `neighbors` as permanent entries. The agent waits up to `timeoutMs`
 * (default 10 s) for a hot-plugged NIC to appear.
 */
export interface ConfigureInterfaceRequest {
  mac: string;
  name: string;
  mtu?: number;
  /** `ADDRESS/PREFIX` each. */
  addresses?: string[];
  routes?: GuestRoute[];
  neighbors?: GuestNeighbor[];
  timeoutMs?: number;
}

export interface ConfiguredInterface {
  name: string;
  /** ifindex in the guest. */
  index: number;
  mac: string;
  mtu: number;
}

/** `aa:bb:cc:dd:ee:ff`, as the agent formats hardware addresses. */
const mac = matching(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/u, 'a MAC address aa:bb:cc:dd:ee:ff', 17);
/** A MAC address, or `""` for a link without one. */
const macOrEmpty: Schema<string> = (v, path) => (v === '' ? '' : mac(v, path));
/** An IPv4 or IPv6 address as inet_ntop writes it (checked for its characters only). */
const ip = matching(/^[0-9A-Fa-f.:]{2,45}$/u, 'an IP address', 45);
/** `ADDRESS/PREFIX`. */
const prefixed = matching(/^[0-9A-Fa-f.:]{2,45}\/[0-9]{1,3}$/u, 'an address ADDRESS/PREFIX', 64);

export const configuredInterfaceSchema: Schema<ConfiguredInterface> = object({
  name: interfaceName,
  index: int(1, 0x7fffffff),
  mac,
  mtu: int(0, 0xffffffff),
});

/** SetNetworkConfig: the guest's hostname and what every container's /etc/resolv.conf and /etc/hosts hold. */
export interface NetworkConfigRequest {
  /** The guest's hostname (and a container's when its spec has none). */
  hostname?: string;
  dns?: { nameservers?: string[]; search?: string[]; options?: string[]; domain?: string };
  /** Extra /etc/hosts lines. */
  hosts?: { ip: string; names: string[] }[];
}

/** What the guest's network looks like (`ip -d addr; ip route show table all`, unicast routes). */
export interface GuestNetworkInfo {
  hostname: string;
  interfaces: {
    name: string;
    index: number;
    /** "" for links without a hardware address. */
    mac: string;
    mtu: number;
    up: boolean;
    /** `ADDRESS/PREFIX` */
    addresses: string[];
    /** Permanent neighbour entries. */
    neighbors: GuestNeighbor[];
  }[];
  routes: {
    dst: string;
    family: 4 | 6;
    gateway: string | null;
    dev: string | null;
    metric: number | null;
    table: number;
    /** RT_SCOPE_* number (0 global, 253 link, 254 host). */
    scope: number;
    /** RTPROT_* number (2 kernel, 118 the agent's). */
    protocol: number;
  }[];
}

const family: Schema<4 | 6> = (v, path) => (int(4, 6)(v, path) === 5 ? oneOfFamilies(path) : (v as 4 | 6));

function oneOfFamilies(path: string): never {
  throw new AgentProtocolError(`${path}: must be 4 or 6`);
}

export const guestNetworkSchema: Schema<GuestNetworkInfo> = object({
  hostname: text(64),
  interfaces: array(
    object({
      name: interfaceName,
      index: int(1, 0x7fffffff),
      mac: macOrEmpty,
      mtu: int(0, 0xffffffff),
      up: bool,
      addresses: array(prefixed, 4096),
      neighbors: array(object({ ip, mac: macOrEmpty }), 4096),
    }),
    4096,
  ),
  routes: array(
    object({
      dst: (v, path) => (v === 'default' ? 'default' : prefixed(v, path)),
      family,
      gateway: nullable(ip),
      dev: nullable(interfaceName),
      metric: nullable(int(0, 0xffffffff)),
      table: int(0, 0xffffffff),
      scope: int(0, 255),
      protocol: int(0, 255),
    }),
    65536,
  ),
});

export const removeInterfaceSchema: Schema<{ found: boolean }> = object({ found: bool });
export const networkConfigSchema: Schema<{ hostnameApplied: boolean }> = object({ hostnameApplied: bool });
