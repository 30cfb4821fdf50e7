/**
 * A macvlan endpoint: a macvlan inside the sandbox's namespace on a parent link elsewhere (what
 * the CNI macvlan plugin makes). The VM's NIC is joined to it by the tcfilter model (or `none`):
 * a macvlan receives only frames for its own MAC, which the guest NIC keeps, so neither a bridge
 * nor a passthru macvtap can sit on it. Addresses and routes are mirrored in the guest.
 *
 * @module
 */
import { InvalidArgumentError } from '../../errors.js';
import type { Interface } from '../scan.js';
import type { EndpointOptions } from './endpoint.js';
import { ModelEndpoint } from './model.js';

export class MacvlanEndpoint extends ModelEndpoint {
  constructor(iface: Interface, options: EndpointOptions) {
    const model = options.model ?? 'tcfilter';
    if (model !== 'tcfilter' && model !== 'none') {
      throw new InvalidArgumentError('model', `interface "${iface.name}" is a macvlan: it takes the tcfilter or none model, not ${model}`);
    }
    super('macvlan', iface, options);
  }
}
