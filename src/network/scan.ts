/**
 * The CNM-style scan: what interfaces a namespace holds, whoever made them (vmpod, a CNI plugin,
 * `ip`, another runtime), with their addresses and routes. Later steps plumb what it finds into
 * the VM and mirror it in the guest.
 *
 * @module
 */
import { listAddresses, type Address } from './address.js';
import { listLinks, type LinkKind } from './link.js';
import { nsArg, type NetnsRef } from './netns.js';
import { listNeighbors, type Neighbor } from './neighbor.js';
import { LOCAL_TABLE, listRoutes, type Route } from './route.js';

/** One interface of a namespace, as the scan finds it. */
export interface Interface {
  name: string;
  index: number;
  kind: LinkKind;
  mac: string;
  mtu: number;
  up: boolean;
  /** IFLA_GROUP: links vmpod creates carry its group. */
  group: number;
  master?: string;
  /** The peer namespace's id, for a veth whose other end lives elsewhere. */
  linkNetnsId?: number;
  /** IFLA_LINK: the peer of a veth, the parent of a macvlan or macvtap (an ifindex, in `linkNetnsId` if set). */
  linkIndex?: number;
  addresses: Address[];
  /** Routes through this interface, in every table but the kernel's local one. */
  routes: Route[];
  /** Permanent neighbour entries on this interface (`ip neigh add ... nud permanent`). */
  neighbors: Neighbor[];
}

/**
 * Lists every interface of a namespace with its addresses, routes and permanent neighbours:
 * `ip -n NS -d link show; ip -n NS address show; ip -n NS route show table all; ip -n NS neigh
 * show nud permanent`. The four dumps are queued together.
 */
export async function scanNetns(netns?: NetnsRef): Promise<Interface[]> {
  nsArg(netns);
  const opts = netns === undefined ? {} : { netns };
  const [links, addresses, routes, neighbors] = await Promise.all([
    listLinks(opts),
    listAddresses(opts),
    listRoutes({ ...opts, table: 'all' }),
    listNeighbors({ ...opts, permanentOnly: true }),
  ]);
  return links.map((l) => {
    const found: Interface = {
      name: l.name,
      index: l.index,
      kind: l.kind,
      mac: l.mac,
      mtu: l.mtu,
      up: l.up,
      group: l.group,
      addresses: addresses.filter((a) => a.index === l.index),
      routes: routes.filter((r) => r.dev === l.name && r.table !== LOCAL_TABLE),
      neighbors: neighbors.filter((n) => n.dev === l.name),
    };
    if (l.master !== undefined) found.master = l.master;
    if (l.linkNetnsId !== undefined) found.linkNetnsId = l.linkNetnsId;
    if (l.linkIndex !== undefined) found.linkIndex = l.linkIndex;
    return found;
  });
}
