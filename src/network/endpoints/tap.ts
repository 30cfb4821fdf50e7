/**
 * A tap endpoint: a tap someone made inside the sandbox's namespace for the VM (`ip tuntap add
 * dev NAME mode tap [multi_queue]`). The hypervisor gets its queues directly (no model). The
 * addresses on a tap are the host side's (e.g. the VM's gateway), so they are not mirrored: the
 * guest gets the addresses and routes given for the interface in the config, and a MAC of its own
 * (random, kept in the record: the tap's is the host side's).
 *
 * @module
 */
import { InvalidArgumentError } from '../../errors.js';
import { guestInterface } from '../guest-config.js';
import { getLink } from '../link.js';
import type { Netns } from '../netns.js';
import type { Interface } from '../scan.js';
import { openTap } from '../tap.js';
import { newRecord, undoChanges, type AttachedEndpoint, type Endpoint, type EndpointContext, type EndpointOptions, type EndpointRecord, upWithFds } from './endpoint.js';
import { randomMac } from './model.js';

export class TapEndpoint implements Endpoint {
  readonly kind = 'tap';
  readonly name: string;
  readonly #record: EndpointRecord;
  readonly #queues: number;

  constructor(iface: Interface, options: EndpointOptions) {
    this.name = iface.name;
    if (options.model !== undefined) {
      throw new InvalidArgumentError('model', `interface "${iface.name}" is a tap: the VM uses it directly, it takes no inter-network model`);
    }
    this.#queues = options.queues;
    const guest = guestInterface(iface, { mac: randomMac(), mtu: iface.mtu }, { mirrorAddresses: false, overrides: options.overrides });
    this.#record = newRecord(iface, 'tap', 'direct', options, guest, { type: 'tap', name: iface.name, queues: 1, multiQueue: false });
  }

  async attach(ctx: EndpointContext): Promise<AttachedEndpoint> {
    const link = await getLink(this.name, { netns: ctx.netns });
    // A single-queue tap takes one queue; a multi_queue one as many as the sandbox has vCPUs.
    const multiQueue = link.tun?.multiQueue === true;
    this.#record.backend = { type: 'tap', name: this.name, queues: multiQueue ? this.#queues : 1, multiQueue };
    await ctx.save(this.#record);
    const { fds } = await openTap(this.name, { netns: ctx.netns, queues: this.#record.backend.queues, multiQueue, vnetHdr: true });
    return { record: this.#record, fds: await upWithFds(ctx, this.#record, this.name, link.up, fds) };
  }

  async detach(netns: Netns): Promise<void> {
    await undoChanges(netns, this.#record.changes);
  }

  save(): EndpointRecord {
    return this.#record;
  }
}
