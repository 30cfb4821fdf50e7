/**
 * A veth endpoint: one end of a veth pair inside the sandbox's namespace (what the CNI bridge
 * and ptp plugins make, or anyone with `ip link add ... type veth`). The VM's NIC is joined to
 * it by an inter-network model (any of them; tcfilter by default) and keeps its MAC and MTU;
 * its addresses and routes are mirrored in the guest.
 *
 * @module
 */
import type { Interface } from '../scan.js';
import type { EndpointOptions } from './endpoint.js';
import { ModelEndpoint } from './model.js';

export class VethEndpoint extends ModelEndpoint {
  constructor(iface: Interface, options: EndpointOptions) {
    super('veth', iface, options);
  }
}
