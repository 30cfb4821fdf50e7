/**
 * A macvlan endpoint: a macvlan inside the sandbox's namespace on a parent link elsewhere (what
 * the CNI macvlan plugin makes). The VM's NIC is joined to it by the tcfilter model (or `none`):
 * a macvlan receives only frames for its own MAC, which the guest NIC keeps, so neither a bridge
 * nor a passthru macvtap can sit on it. Addresses and routes are mirrored in the guest.
 *
 * @module
 */
import { InvalidArgumentError } from '../../errors.js';
import { guestInterface } from '../guest-config.js';
import type { Netns } from '../netns.js';
import type { Interface } from '../scan.js';
import { newRecord, undoChanges, type AttachedEndpoint, type Endpoint, type EndpointContext, type EndpointOptions, type EndpointRecord, type InterNetworkModel } from './endpoint.js';
import { connectModel, modelBackend } from './model.js';

export class MacvlanEndpoint implements Endpoint {
  readonly kind = 'macvlan';
  readonly name: string;
  readonly #model: InterNetworkModel;
  readonly #record: EndpointRecord;

  constructor(iface: Interface, options: EndpointOptions) {
    this.name = iface.name;
    this.#model = options.model ?? 'tcfilter';
    if (this.#model !== 'tcfilter' && this.#model !== 'none') {
      throw new InvalidArgumentError('model', `interface "${iface.name}" is a macvlan: it takes the tcfilter or none model, not ${this.#model}`);
    }
    const guest = guestInterface(iface, { mac: iface.mac, mtu: iface.mtu }, { mirrorAddresses: true, overrides: options.overrides });
    this.#record = newRecord(iface, 'macvlan', this.#model, options, guest, modelBackend(this.#model, options.index, options.queues));
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
