/**
 * Links over rtnetlink: create veth pairs, macvlans and bridges; change, delete and list links.
 * Each call names the `ip link` command it equals. Taps and macvtaps, which come with file
 * descriptors, are in `tap.ts`.
 *
 * @module
 */
import { AlreadyExistsError, InvalidArgumentError, NotFoundError } from '../errors.js';
import type { NativeLink, NativeLinkAttributes } from '../native.js';
import * as validate from '../validate.js';
import * as check from './check.js';
import { netnsErrors, nsArg, type NetnsOption, type NetnsRef } from './netns.js';
import { callNative, combineErrorMaps, type NativeErrorMap } from '../native-call.js';

/** Modes of macvlan and macvtap links (`ip link add ... type macvlan mode MODE`). */
export type MacvlanMode = 'private' | 'vepa' | 'bridge' | 'passthru' | 'source';
const MACVLAN_MODES: readonly MacvlanMode[] = ['private', 'vepa', 'bridge', 'passthru', 'source'];

/**
 * What a link is: the kernel's link kind, with taps told apart from tuns, and `loopback` or
 * `device` for links that have no kind (lo, physical NICs).
 */
export type LinkKind = 'veth' | 'tap' | 'tun' | 'macvtap' | 'macvlan' | 'bridge' | 'loopback' | 'device' | (string & {});

/** Settings every link accepts at creation. */
export interface LinkAttributes {
  /** `mtu N` */
  mtu?: number;
  /** `address MAC` (unicast). */
  mac?: string;
  /** `up`; a new link is down unless this is true. */
  up?: boolean;
  /** `group N`: every link of a group can be deleted in one call ({@link deleteLinkGroup}). */
  group?: number;
  /** `txqueuelen N` */
  txQueueLen?: number;
  /** `master NAME`: enslave to a bridge. */
  master?: string;
}

/** The peer end of a veth pair. */
export interface VethPeer {
  /** `peer name NAME` */
  name: string;
  /** `peer ... netns NS`: the peer is created directly inside it (moving it later costs ~30 ms). */
  netns?: NetnsRef;
  mtu?: number;
  mac?: string;
  up?: boolean;
  group?: number;
  txQueueLen?: number;
}

export interface VethOptions extends LinkAttributes, NetnsOption {
  name: string;
  /** The other end. Its MTU defaults to `mtu`: a pair with two MTUs drops frames. */
  peer: VethPeer;
}

export interface MacvlanOptions extends LinkAttributes, NetnsOption {
  name: string;
  /** `link LOWER`: the parent link, in `netns`. */
  link: string;
  /** `mode MODE` (default `bridge`). */
  mode?: MacvlanMode;
  /** `netns NS`: create the link directly in another namespace than its parent's. */
  into?: NetnsRef;
}

export interface BridgeOptions extends LinkAttributes, NetnsOption {
  name: string;
  /** `netns NS`: create the bridge directly in this namespace. */
  into?: NetnsRef;
}

/** A change to an existing link: `ip link set dev NAME ...`. */
export interface LinkChange extends NetnsOption {
  /** `up` / `down` */
  up?: boolean;
  mtu?: number;
  /** `address MAC` */
  mac?: string;
  group?: number;
  txQueueLen?: number;
  /** `master NAME`, or null for `nomaster`. */
  master?: string | null;
  /** `name NEW` */
  name?: string;
  /** `netns NS`: move the link there (~30 ms for a veth end in the kernel). */
  moveTo?: NetnsRef;
}

/** A link as `ip -d link show` describes it. */
export interface Link {
  index: number;
  name: string;
  kind: LinkKind;
  /** `aa:bb:cc:dd:ee:ff` ("" for links without a hardware address). */
  mac: string;
  mtu: number;
  /** Administratively up (IFF_UP). */
  up: boolean;
  /** Carrier present (IFF_LOWER_UP). */
  lowerUp: boolean;
  /** RFC 2863 operational state: `up`, `down`, `unknown`, `lowerlayerdown`, ... */
  operState: string;
  group: number;
  txQueueLen: number;
  /** IFF_* flags. */
  flags: number;
  /** The master (bridge) this link is enslaved to. */
  master?: string;
  masterIndex?: number;
  /** IFLA_LINK: the peer of a veth or the parent of a macvlan, by index (in `linkNetnsId` if set). */
  linkIndex?: number;
  /** The peer namespace's id as seen from this one, when the link's other side lives elsewhere. */
  linkNetnsId?: number;
  macvlanMode?: MacvlanMode | 'unknown';
  /** Tun/tap details: type, vnet_hdr, persist, multi_queue, queues, owner, group. */
  tun?: NonNullable<NativeLink['tun']>;
}

/** @internal */
export function toLink(l: NativeLink): Link {
  const kind: LinkKind = l.kind === 'tun' ? (l.tun?.type ?? 'tun') : l.kind || (l.loopback ? 'loopback' : 'device');
  const link: Link = {
    index: l.index,
    name: l.name,
    kind,
    mac: l.mac,
    mtu: l.mtu,
    up: l.up,
    lowerUp: l.lowerUp,
    operState: l.operState,
    group: l.group,
    txQueueLen: l.txQueueLen,
    flags: l.flags,
  };
  if (l.master !== undefined) link.master = l.master;
  if (l.masterIndex !== undefined) link.masterIndex = l.masterIndex;
  if (l.linkIndex !== undefined) link.linkIndex = l.linkIndex;
  if (l.linkNetnsId !== undefined) link.linkNetnsId = l.linkNetnsId;
  if (l.macvlanMode !== undefined) link.macvlanMode = l.macvlanMode;
  if (l.tun !== undefined) link.tun = l.tun;
  return link;
}

/** @internal Validated {@link LinkAttributes} for the addon. */
export function linkAttributes(o: check.Loose<LinkAttributes>, field: string): NativeLinkAttributes {
  return {
    mtu: check.optional(o.mtu, (v) => check.mtu(v, `${field}.mtu`)),
    mac: check.optional(o.mac, (v) => check.unicastMac(v, `${field}.mac`)),
    up: check.optional(o.up, (v) => check.boolean(v, `${field}.up`)),
    group: check.optional(o.group, (v) => check.u32(v, `${field}.group`)),
    txQueueLen: check.optional(o.txQueueLen, (v) => check.u32(v, `${field}.txQueueLen`)),
    master: check.optional(o.master, (v) => validate.interfaceName(v, `${field}.master`)),
  };
}

/** @internal "No such link" from a name lookup or a request about `name`. */
export function linkErrors(name: string): NativeErrorMap {
  return combineErrorMaps(netnsErrors, (e, system) =>
    e.code === 'ENODEV' ? new NotFoundError('link', e.target ?? name, { cause: system }) : undefined,
  );
}

/** @internal "Name taken" on creation. */
export function createErrors(kind: string, name: string): NativeErrorMap {
  return combineErrorMaps(
    (e, system) => (e.code === 'EEXIST' ? new AlreadyExistsError(kind, name, { cause: system }) : undefined),
    linkErrors(name),
  );
}

/**
 * Creates a veth pair, the peer directly inside its namespace:
 * `ip [-n NS] link add NAME [mtu N] [address MAC] [group G] type veth peer name PEER [netns PEERNS] ...`
 * then `ip link set NAME up` / `ip -n PEERNS link set PEER up` when `up` is asked.
 *
 * @returns the new link's ifindex.
 * @throws {@link AlreadyExistsError} when a name is taken, {@link NotFoundError} for a missing
 *   namespace or master.
 */
export async function addVeth(options: VethOptions): Promise<number> {
  const o = check.options(options, 'options');
  const name = check.newInterfaceName(o.name, 'name');
  if (typeof o.peer !== 'object' || o.peer === null) throw new InvalidArgumentError('peer', 'a veth needs a peer { name }');
  const peerName = check.newInterfaceName(o.peer.name, 'peer.name');
  const ns = nsArg(o.netns);
  const peerNs = o.peer.netns === undefined ? ns : nsArg(o.peer.netns, 'peer.netns');
  if (peerNs === ns && peerName === name) throw new InvalidArgumentError('peer.name', `both ends are named "${name}" in one namespace`);
  const attrs = linkAttributes(o, 'options');
  const { master: _peerMaster, ...peerAttrs } = linkAttributes({ ...o.peer, mtu: o.peer.mtu ?? o.mtu }, 'peer');
  return callNative(
    (n) => n.linkAdd(ns, { kind: 'veth', name, ...attrs, peer: { name: peerName, ...peerAttrs, netns: peerNs } }),
    createErrors('veth', `${name}" or its peer "${peerName}`),
  );
}

/**
 * Creates a macvlan on a parent link: `ip [-n NS] link add NAME link LOWER [netns INTO] type
 * macvlan mode MODE`.
 *
 * @returns the new link's ifindex.
 */
export async function addMacvlan(options: MacvlanOptions): Promise<number> {
  return addOnLower('macvlan', options);
}

/** @internal A macvlan or macvtap on `options.link` (for macvtaps with fds, see tap.ts). */
export async function addOnLower(kind: 'macvlan' | 'macvtap', options: MacvlanOptions): Promise<number> {
  const o = check.options(options, 'options');
  const name = check.newInterfaceName(o.name, 'name');
  const lower = validate.interfaceName(o.link, 'link');
  const mode = check.oneOf(o.mode ?? 'bridge', 'mode', MACVLAN_MODES);
  const ns = nsArg(o.netns);
  const into = o.into === undefined ? undefined : nsArg(o.into, 'into');
  const attrs = linkAttributes(o, 'options');
  return callNative((n) => n.linkAdd(ns, { kind, name, link: lower, mode, ...attrs, netns: into }), createErrors('link', name));
}

/**
 * Creates a bridge: `ip [-n NS] link add NAME [netns INTO] type bridge`.
 *
 * @returns the new link's ifindex.
 */
export async function addBridge(options: BridgeOptions): Promise<number> {
  const o = check.options(options, 'options');
  const name = check.newInterfaceName(o.name, 'name');
  const ns = nsArg(o.netns);
  const into = o.into === undefined ? undefined : nsArg(o.into, 'into');
  const attrs = linkAttributes(o, 'options');
  return callNative((n) => n.linkAdd(ns, { kind: 'bridge', name, ...attrs, netns: into }), createErrors('link', name));
}

/**
 * Changes a link in one request: `ip [-n NS] link set dev NAME [up|down] [mtu N] [address MAC]
 * [group G] [txqueuelen N] [master M | nomaster] [name NEW] [netns NS2]`.
 *
 * @throws {@link NotFoundError} for a missing link or master.
 */
export async function setLink(name: string, change: LinkChange): Promise<void> {
  const dev = validate.interfaceName(name, 'name');
  const c = check.options(change, 'change');
  const ns = nsArg(c.netns);
  const { master: _master, ...attrs } = linkAttributes({ ...c, master: undefined }, 'change');
  const master = c.master === null ? null : check.optional(c.master, (v) => validate.interfaceName(v, 'change.master'));
  const newName = check.optional(c.name, (v) => check.newInterfaceName(v, 'change.name'));
  const moveTo = c.moveTo === undefined ? undefined : nsArg(c.moveTo, 'change.moveTo');
  await callNative(
    (n) => n.linkSet(ns, dev, { ...attrs, master, newName, netns: moveTo }),
    combineErrorMaps(
      (e, system) => (e.code === 'EEXIST' && newName ? new AlreadyExistsError('link', newName, { cause: system }) : undefined),
      linkErrors(dev),
    ),
  );
}

/**
 * Deletes a link (a veth takes its peer along): `ip [-n NS] link delete dev NAME`.
 *
 * @throws {@link NotFoundError} when there is no such link.
 */
export async function deleteLink(name: string, options?: NetnsOption): Promise<void> {
  const dev = validate.interfaceName(name, 'name');
  const ns = nsArg(check.options(options, 'options').netns);
  await callNative((n) => n.linkDelete(ns, dev), linkErrors(dev));
}

/**
 * Deletes every link of a group in one request, unregistered together (one RCU grace period for
 * all instead of one each): `ip [-n NS] link delete group G`.
 *
 * @throws {@link NotFoundError} when no link is in the group.
 */
export async function deleteLinkGroup(group: number, options?: NetnsOption): Promise<void> {
  const g = check.u32(group, 'group', 1);
  const ns = nsArg(check.options(options, 'options').netns);
  await callNative(
    (n) => n.linkDeleteGroup(ns, g),
    combineErrorMaps(netnsErrors, (e, system) => (e.code === 'ENODEV' ? new NotFoundError('link group', String(g), { cause: system }) : undefined)),
  );
}

/** Every link of the namespace: `ip [-n NS] -d link show`. */
export async function listLinks(options?: NetnsOption): Promise<Link[]> {
  const ns = nsArg(check.options(options, 'options').netns);
  return (await callNative((n) => n.linkList(ns), netnsErrors)).map(toLink);
}

/**
 * One link: `ip [-n NS] -d link show dev NAME`.
 *
 * @throws {@link NotFoundError} when there is no such link.
 */
export async function getLink(name: string, options?: NetnsOption): Promise<Link> {
  const dev = validate.interfaceName(name, 'name');
  const ns = nsArg(check.options(options, 'options').netns);
  return toLink(await callNative((n) => n.linkGet(ns, dev), linkErrors(dev)));
}
