/**
 * A macvtap endpoint: a macvtap someone made inside the sandbox's namespace (`ip link add NAME
 * link LOWER type macvtap`). The hypervisor gets its queues directly, through a private device
 * node (see `openMacvtap`); the guest NIC must keep its MAC (a macvtap delivers only frames for
 * it) and gets its MTU, addresses and routes.
 *
 * @module
 */
import { InvalidArgumentError } from '../../errors.js';
import { guestInterface } from '../guest-config.js';
import type { Netns } from '../netns.js';
import type { Interface } from '../scan.js';
import { openMacvtap } from '../tap.js';
import { newRecord, undoChanges, type AttachedEndpoint, type Endpoint, type EndpointContext, type EndpointOptions, type EndpointRecord, upWithFds } from './endpoint.js';

export class MacvtapEndpoint implements Endpoint {
  readonly kind = 'macvtap';
  readonly name: string;
  readonly #record: EndpointRecord;
  readonly #up: boolean;

  constructor(iface: Interface, options: EndpointOptions) {
    this.name = iface.name;
    if (options.model !== undefined) {
      throw new InvalidArgumentError('model', `interface "${iface.name}" is a macvtap: the VM uses it directly, it takes no inter-network model`);
    }
    this.#up = iface.up;
    const guest = guestInterface(iface, { mac: iface.mac, mtu: iface.mtu }, { mirrorAddresses: true, overrides: options.overrides });
    this.#record = newRecord(iface, 'macvtap', 'direct', options, guest, { type: 'macvtap', name: iface.name, queues: options.queues, multiQueue: options.queues > 1 });
  }

  async attach(ctx: EndpointContext): Promise<AttachedEndpoint> {
    const fds = await openMacvtap(this.name, { netns: ctx.netns, queues: this.#record.backend.queues, vnetHdr: true });
    return { record: this.#record, fds: await upWithFds(ctx, this.#record, this.name, this.#up, fds) };
  }

  async detach(netns: Netns): Promise<void> {
    await undoChanges(netns, this.#record.changes);
  }

  save(): EndpointRecord {
    return this.#record;
  }
}
