/**
 * A veth endpoint: one end of a veth pair inside the sandbox's namespace (what the CNI bridge
 * and ptp plugins make, or anyone with `ip link add ... type veth`). The VM's NIC is joined to
 * it by an inter-network model (any of them; tcfilter by default) and keeps its MAC and MTU;
 * its addresses and routes are mirrored in the guest.
 *
 * @module
 */
import { guestInterface } from '../guest-config.js';
import type { Netns } from '../netns.js';
import type { Interface } from '../scan.js';
import { newRecord, undoChanges, type AttachedEndpoint, type Endpoint, type EndpointContext, type EndpointOptions, type EndpointRecord, type InterNetworkModel } from './endpoint.js';
import { connectModel, modelBackend } from './model.js';

export class VethEndpoint implements Endpoint {
  readonly kind = 'veth';
  readonly name: string;
  readonly #model: InterNetworkModel;
  readonly #record: EndpointRecord;

  constructor(iface: Interface, options: EndpointOptions) {
    this.name = iface.name;
    this.#model = options.model ?? 'tcfilter';
    const guest = guestInterface(iface, { mac: iface.mac, mtu: iface.mtu }, { mirrorAddresses: true, overrides: options.overrides });
    this.#record = newRecord(iface, 'veth', this.#model, options, guest, modelBackend(this.#model, options.index, options.queues));
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
