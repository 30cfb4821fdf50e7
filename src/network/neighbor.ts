/**
 * Neighbour (ARP/NDP) entries of a namespace: `ip -n NS neigh show`. The scan mirrors the
 * permanent ones, which someone set on purpose (a CNI plugin, an operator: `ip neigh add ...
 * nud permanent`), into the guest; the kernel's learned ones are left to the guest to learn.
 *
 * @module
 */
import type { NativeNeighbor } from '../native.js';
import * as validate from '../validate.js';
import * as check from './check.js';
import { netnsErrors, nsArg, type NetnsOption } from './netns.js';
import { callNative } from '../native-call.js';

/** NUD_* states of neighbour entries (linux/neighbour.h). */
const NUD_STATES: ReadonlyArray<[number, NeighborState]> = [
  [0x01, 'incomplete'],
  [0x02, 'reachable'],
  [0x04, 'stale'],
  [0x08, 'delay'],
  [0x10, 'probe'],
  [0x20, 'failed'],
  [0x40, 'noarp'],
  [0x80, 'permanent'],
];

export type NeighborState = 'incomplete' | 'reachable' | 'stale' | 'delay' | 'probe' | 'failed' | 'noarp' | 'permanent';

/** One neighbour entry. */
export interface Neighbor {
  family: 4 | 6;
  /** The neighbour's IP address. */
  address: string;
  /** Its link-layer address, when known. */
  mac?: string;
  dev?: string;
  /** NUD states set on the entry, e.g. `['permanent']`, `['reachable']`. */
  states: NeighborState[];
}

function toNeighbor(n: NativeNeighbor): Neighbor {
  const out: Neighbor = { family: n.family, address: n.dst, states: NUD_STATES.filter(([bit]) => (n.state & bit) !== 0).map(([, name]) => name) };
  if (n.lladdr !== undefined) out.mac = n.lladdr;
  if (n.dev !== undefined) out.dev = n.dev;
  return out;
}

/** Lists neighbour entries (`ip [-n NS] neigh show [dev DEV]`), optionally only the permanent ones. */
export async function listNeighbors(options?: NetnsOption & { dev?: string; permanentOnly?: boolean }): Promise<Neighbor[]> {
  const o = check.options(options, 'options');
  const dev = check.optional(o.dev, (v) => validate.interfaceName(v, 'dev'));
  const ns = nsArg(o.netns);
  const all = (await callNative((n) => n.neighList(ns), netnsErrors)).map(toNeighbor);
  return all.filter((n) => (dev === undefined || n.dev === dev) && (o.permanentOnly !== true || n.states.includes('permanent')));
}
