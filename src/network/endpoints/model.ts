/**
 * The inter-network models: how a VM NIC is joined to a veth or macvlan endpoint inside the
 * sandbox's namespace. Each model records every change before it makes it (see endpoint.ts),
 * and returns the queue fds of the backend the hypervisor gets.
 *
 * ```
 * tcfilter:  IFACE ◄─tc redirect─► vmtapN ◄─fds─ QEMU        (Kata's default)
 * macvtap:   IFACE ◄─ vmmvtN (macvtap passthru) ◄─fds─ QEMU
 * bridge:    IFACE ─┐
 *                   vmbrN (bridge)
 *            vmtapN ┘ ◄─fds─ QEMU                              (IFACE's MAC moves to the guest)
 * none:      vmtapN ◄─fds─ QEMU                                (joined by the user)
 * ```
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { AlreadyExistsError } from '../../errors.js';
import { addBridge, setLink } from '../link.js';
import { listQdiscs } from '../tc.js';
import { connectTcFilter } from '../tcfilter.js';
import { createMacvtap, createTap } from '../tap.js';
import { guestInterface } from '../guest-config.js';
import type { Netns } from '../netns.js';
import type { Interface } from '../scan.js';
import {
  closeFds,
  endpointNames,
  newRecord,
  recordChange,
  undoChanges,
  type AttachedEndpoint,
  type Endpoint,
  type EndpointContext,
  type EndpointOptions,
  type EndpointRecord,
  type InterNetworkModel,
} from './endpoint.js';

/** A random locally administered unicast MAC (`x2:...`). */
export function randomMac(): string {
  const bytes = randomBytes(6);
  bytes[0] = ((bytes[0] as number) & 0xfe) | 0x02;
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

/** A tap for the VM: `ip -n NS tuntap add dev vmtapN mode tap vnet_hdr [multi_queue]; ip link set ... up mtu M group G`. */
async function addTap(ctx: EndpointContext, record: EndpointRecord): Promise<number[]> {
  const { tap } = endpointNames(record.index);
  const queues = record.backend.queues;
  await recordChange(ctx, record, { type: 'link', name: tap });
  const created = await createTap({
    name: tap,
    netns: ctx.netns,
    queues,
    multiQueue: queues > 1,
    vnetHdr: true,
    persist: true,
    up: true,
    group: ctx.linkGroup,
    mtu: record.mtu,
  });
  return created.fds;
}

/** Runs the steps after the backend's fds were opened; closes the fds when one fails. */
async function thenWith(fds: number[], steps: () => Promise<void>): Promise<number[]> {
  try {
    await steps();
    return fds;
  } catch (error) {
    closeFds(fds);
    throw error;
  }
}

async function tcfilter(ctx: EndpointContext, record: EndpointRecord): Promise<number[]> {
  const { tap } = endpointNames(record.index);
  // Never take over (or later delete) an ingress qdisc someone else put on the interface.
  if ((await listQdiscs({ netns: ctx.netns, dev: record.name })).some((q) => q.kind === 'ingress')) {
    throw new AlreadyExistsError('ingress qdisc', `${record.name} (the tcfilter model needs the interface's ingress; choose another model)`);
  }
  return thenWith(await addTap(ctx, record), async () => {
    await recordChange(ctx, record, { type: 'ingress', dev: record.name });
    await recordChange(ctx, record, { type: 'ingress', dev: tap });
    await connectTcFilter(record.name, tap, { netns: ctx.netns });
  });
}

async function macvtap(ctx: EndpointContext, record: EndpointRecord): Promise<number[]> {
  const name = endpointNames(record.index).macvtap;
  await recordChange(ctx, record, { type: 'link', name });
  // passthru: the macvtap takes the interface's MAC and every frame arriving on it.
  const created = await createMacvtap({
    name,
    link: record.name,
    mode: 'passthru',
    netns: ctx.netns,
    queues: record.backend.queues,
    vnetHdr: true,
    up: true,
    group: ctx.linkGroup,
  });
  return created.fds;
}

async function bridge(ctx: EndpointContext, record: EndpointRecord): Promise<number[]> {
  const { bridge: br, tap } = endpointNames(record.index);
  // The guest NIC keeps the interface's MAC; a bridge would deliver frames for a port's own MAC
  // to itself, so the interface takes a random one while it is bridged.
  await recordChange(ctx, record, { type: 'mac', dev: record.name, original: record.mac });
  await setLink(record.name, { netns: ctx.netns, mac: randomMac() });
  await recordChange(ctx, record, { type: 'link', name: br });
  await addBridge({ name: br, netns: ctx.netns, up: true, group: ctx.linkGroup, mtu: record.mtu });
  return thenWith(await addTap(ctx, record), async () => {
    await setLink(tap, { netns: ctx.netns, master: br });
    await recordChange(ctx, record, { type: 'master', dev: record.name });
    await setLink(record.name, { netns: ctx.netns, master: br });
  });
}

/** Makes what `model` needs for the endpoint of `record`; returns the backend's queue fds. */
export async function connectModel(model: InterNetworkModel, ctx: EndpointContext, record: EndpointRecord): Promise<number[]> {
  switch (model) {
    case 'tcfilter':
      return tcfilter(ctx, record);
    case 'macvtap':
      return macvtap(ctx, record);
    case 'bridge':
      return bridge(ctx, record);
    case 'none':
      return addTap(ctx, record);
  }
}

/** The backend a model gives the hypervisor. */
export function modelBackend(model: InterNetworkModel, index: number, queues: number): EndpointRecord['backend'] {
  const names = endpointNames(index);
  return model === 'macvtap'
    ? { type: 'macvtap', name: names.macvtap, queues, multiQueue: queues > 1 }
    : { type: 'tap', name: names.tap, queues, multiQueue: queues > 1 };
}

/**
 * An endpoint joined to the VM's NIC by an inter-network model (a veth or a macvlan): the NIC
 * keeps the interface's MAC and MTU, its addresses, routes and permanent neighbours are
 * mirrored in the guest, and `attach` makes what the model needs.
 */
export class ModelEndpoint implements Endpoint {
  readonly name: string;
  readonly #model: InterNetworkModel;
  readonly #record: EndpointRecord;

  constructor(
    readonly kind: 'veth' | 'macvlan',
    iface: Interface,
    options: EndpointOptions,
  ) {
    this.name = iface.name;
    this.#model = options.model ?? 'tcfilter';
    const guest = guestInterface(iface, { mac: iface.mac, mtu: iface.mtu }, { mirrorAddresses: true, overrides: options.overrides });
    this.#record = newRecord(iface, kind, this.#model, options, guest, modelBackend(this.#model, options.index, options.queues));
  }

  async attach(ctx: EndpointContext): Promise<AttachedEndpoint> {
    const fds = await connectModel(this.#model, ctx, this.#record);
    return { record: this.#record, fds };
  }

  async detach(netns: Netns): Promise<void> {
    await undoChanges(netns, this.#record.changes);
  }

  save(): EndpointRecord {
    return this.#record;
  }
}
