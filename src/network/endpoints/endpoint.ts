/**
 * Endpoints, as Kata's runtime-rs has them (`trait Endpoint { attach; detach; save }`): an
 * interface of the sandbox's network namespace that becomes one NIC of the VM. Each kind
 * (veth, macvlan, tap, macvtap; vhost-user and physical/VFIO later) lives in its own file and
 * says how the VM reaches the interface; what vmpod changes on the host on the way is recorded
 * as {@link HostChange}s BEFORE it is made, so that {@link undoChanges} can remove exactly that,
 * from the persisted record alone, in any process.
 *
 * @module
 */
import { throwFailures } from '../../cleanup.js';
import { closeSync } from 'node:fs';
import { NotFoundError } from '../../errors.js';
import type { GuestInterface, GuestOverrides } from '../guest-config.js';
import { deleteIngressQdisc } from '../tc.js';
import { deleteLink, setLink } from '../link.js';
import type { Netns } from '../netns.js';
import type { Interface } from '../scan.js';
import { openMacvtap, openTap } from '../tap.js';

/** The kinds of interface vmpod plugs into a VM. */
export type EndpointKind = 'veth' | 'macvlan' | 'tap' | 'macvtap';
/** Every endpoint kind. */
export const ENDPOINT_KINDS: readonly EndpointKind[] = ['veth', 'macvlan', 'tap', 'macvtap'];

/**
 * How the VM's NIC is joined to a veth or macvlan endpoint inside the namespace:
 * - `tcfilter` (default): a tap, and tc redirects both ways between it and the interface;
 * - `macvtap`: a macvtap in passthru mode on the interface (veth only);
 * - `bridge`: a bridge holding the interface and a tap (veth only; the interface's MAC moves to
 *   the guest, the interface gets a random one while it is bridged);
 * - `none`: just the tap, joined to nothing: the user connects it (Kata's "none").
 * Tap and macvtap endpoints are used as they are (`direct`).
 */
export type InterNetworkModel = 'tcfilter' | 'macvtap' | 'bridge' | 'none';
/** Every inter-network model. */
export const MODELS: readonly InterNetworkModel[] = ['tcfilter', 'macvtap', 'bridge', 'none'];

/** A change vmpod made on the host for an endpoint, recorded before it was made. */
export type HostChange =
  /** A link vmpod created in the namespace (tap, bridge, macvtap): deleted. */
  | { readonly type: 'link'; readonly name: string }
  /** An ingress qdisc vmpod added (its filters go with it): deleted. */
  | { readonly type: 'ingress'; readonly dev: string }
  /** A MAC vmpod changed: restored. */
  | { readonly type: 'mac'; readonly dev: string; readonly original: string }
  /** A link vmpod enslaved to one of its bridges: released. */
  | { readonly type: 'master'; readonly dev: string }
  /** A link vmpod set up (an existing tap or macvtap that was down): set down again. */
  | { readonly type: 'up'; readonly dev: string };

/** Where an endpoint came from. */
export type EndpointOrigin = { readonly type: 'cni'; readonly network: string } | { readonly type: 'scan' };

/** The persisted record of an endpoint: JSON, enough to reopen or undo it in another process. */
export interface EndpointRecord {
  /** The interface in the namespace; the guest interface gets the same name. */
  name: string;
  kind: EndpointKind;
  model: InterNetworkModel | 'direct';
  origin: EndpointOrigin;
  /** Number of this endpoint in its network: names vmpod's links (`vmtapN`) and the NIC (`vnicN`). */
  index: number;
  /** The VM device id of its NIC. */
  deviceId: string;
  /** What the hypervisor gets the queue fds of (a tap or macvtap in the namespace). */
  backend: { type: 'tap' | 'macvtap'; name: string; queues: number; multiQueue: boolean };
  /** MAC and MTU the guest NIC keeps (the interface's). */
  mac: string;
  mtu: number;
  changes: HostChange[];
  /** What the agent configures in the guest. */
  guest: GuestInterface;
  /** True once the NIC is in the VM (cold plugged at start, or hot plugged). */
  plugged: boolean;
}

/** What an endpoint's attach may do. */
export interface EndpointContext {
  readonly netns: Netns;
  /** Link group of the links vmpod creates (`NETWORK_LINK_GROUP`). */
  readonly linkGroup: number;
  /** Persists the record (with a change about to be made); called before every change. */
  save(record: EndpointRecord): Promise<void>;
}

/** An endpoint's settings from the config. */
export interface EndpointOptions {
  readonly index: number;
  readonly origin: EndpointOrigin;
  /** Queues of the NIC (vCPUs of the sandbox); more than 1 makes a multi-queue tap. */
  readonly queues: number;
  readonly model?: InterNetworkModel | undefined;
  readonly overrides?: GuestOverrides | undefined;
}

/** An endpoint attached on the host: its record and this process's copies of the queue fds. */
export interface AttachedEndpoint {
  readonly record: EndpointRecord;
  /** O_CLOEXEC queue fds for the hypervisor; the caller closes them once it has its copies. */
  readonly fds: number[];
}

/** One kind of endpoint. */
export interface Endpoint {
  readonly kind: EndpointKind;
  /** The interface's name in the namespace. */
  readonly name: string;
  /** Makes what the VM needs on the host (each change recorded first) and opens the queue fds. */
  attach(ctx: EndpointContext): Promise<AttachedEndpoint>;
  /** Undoes what attach changed, from the record (see {@link undoChanges}). */
  detach(netns: Netns): Promise<void>;
  /** The persisted record. */
  save(): EndpointRecord;
}

/** The device ids and names vmpod gives an endpoint's objects. */
export function endpointNames(index: number): { deviceId: string; tap: string; bridge: string; macvtap: string } {
  return { deviceId: `vnic${index}`, tap: `vmtap${index}`, bridge: `vmbr${index}`, macvtap: `vmmvt${index}` };
}

/** A fresh record for an interface found in the namespace. */
export function newRecord(iface: Interface, kind: EndpointKind, model: EndpointRecord['model'], options: EndpointOptions, guest: GuestInterface, backend: EndpointRecord['backend']): EndpointRecord {
  return {
    name: iface.name,
    kind,
    model,
    origin: options.origin,
    index: options.index,
    deviceId: endpointNames(options.index).deviceId,
    backend,
    mac: guest.mac,
    mtu: guest.mtu,
    changes: [],
    guest,
    plugged: false,
  };
}

/** Records `change` (persisted) before the caller makes it. */
export async function recordChange(ctx: EndpointContext, record: EndpointRecord, change: HostChange): Promise<void> {
  record.changes.push(change);
  await ctx.save(record);
}

function ignoreNotFound(e: unknown): void {
  if (!(e instanceof NotFoundError)) throw e;
}

/**
 * Undoes recorded changes, last first, each tried even when one fails: links deleted, ingress
 * qdiscs removed, MACs restored, enslaved links released. What is already gone (the interface
 * was removed by a CNI DEL or by its owner) counts as undone. Equivalent to `ip link del`,
 * `tc qdisc del dev X ingress`, `ip link set X address A`, `ip link set X nomaster`, `ip link set X down`.
 */
export async function undoChanges(netns: Netns, changes: readonly HostChange[]): Promise<void> {
  const failures: unknown[] = [];
  for (const change of [...changes].reverse()) {
    try {
      switch (change.type) {
        case 'link':
          await deleteLink(change.name, { netns }).catch(ignoreNotFound);
          break;
        case 'ingress':
          await deleteIngressQdisc(change.dev, { netns }).catch(ignoreNotFound);
          break;
        case 'mac':
          await setLink(change.dev, { netns, mac: change.original }).catch(ignoreNotFound);
          break;
        case 'master':
          await setLink(change.dev, { netns, master: null }).catch(ignoreNotFound);
          break;
        case 'up':
          await setLink(change.dev, { netns, up: false }).catch(ignoreNotFound);
          break;
      }
    } catch (error) {
      failures.push(error);
    }
  }
  throwFailures(failures, 'could not undo every change of the endpoint');
}

/** Opens the queue fds of an attached endpoint's backend again (for a new boot of the VM). */
export async function openBackend(netns: Netns, backend: EndpointRecord['backend']): Promise<number[]> {
  if (backend.type === 'macvtap') return openMacvtap(backend.name, { netns, queues: backend.queues, vnetHdr: true });
  return (await openTap(backend.name, { netns, queues: backend.queues, multiQueue: backend.multiQueue, vnetHdr: true })).fds;
}

/**
 * Brings a link that the VM uses directly (a tap or macvtap) up unless it already is, with the
 * change recorded first; on failure its just-opened queue fds are closed. Returns them.
 * Equivalent to `ip link set DEV up`.
 */
export async function upWithFds(ctx: EndpointContext, record: EndpointRecord, dev: string, alreadyUp: boolean, fds: number[]): Promise<number[]> {
  try {
    if (!alreadyUp) {
      await recordChange(ctx, record, { type: 'up', dev });
      await setLink(dev, { netns: ctx.netns, up: true });
    }
  } catch (error) {
    closeFds(fds);
    throw error;
  }
  return fds;
}

/** Closes fds, ignoring those already closed. */
export function closeFds(fds: readonly number[]): void {
  for (const fd of fds) {
    try {
      closeSync(fd);
    } catch {
      // already closed
    }
  }
}
