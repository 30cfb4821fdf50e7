/**
 * Endpoint kinds, one file each (veth, macvlan, tap, macvtap), and the choice among them for an
 * interface of the sandbox's namespace. A new kind (vhost-user, physical/VFIO) is a new file
 * implementing {@link Endpoint} and one case in {@link createEndpoint}.
 *
 * @module
 */
import { InvalidArgumentError } from '../../errors.js';
import type { Interface } from '../scan.js';
import type { Endpoint, EndpointKind, EndpointOptions } from './endpoint.js';
import { MacvlanEndpoint } from './macvlan.js';
import { MacvtapEndpoint } from './macvtap.js';
import { TapEndpoint } from './tap.js';
import { VethEndpoint } from './veth.js';

export * from './endpoint.js';
export { randomMac } from './model.js';
export { VethEndpoint, MacvlanEndpoint, TapEndpoint, MacvtapEndpoint };

/** True when vmpod can plug this interface into a VM. */
export function isPluggable(iface: Pick<Interface, 'kind'>): iface is { kind: EndpointKind } {
  return iface.kind === 'veth' || iface.kind === 'macvlan' || iface.kind === 'tap' || iface.kind === 'macvtap';
}

/**
 * The endpoint for an interface of the namespace, by its kind.
 *
 * @throws {@link InvalidArgumentError} for a kind vmpod does not plug (bridge, loopback, tun, ...),
 *   or a model the kind does not take.
 */
export function createEndpoint(iface: Interface, options: EndpointOptions): Endpoint {
  switch (iface.kind) {
    case 'veth':
      return new VethEndpoint(iface, options);
    case 'macvlan':
      return new MacvlanEndpoint(iface, options);
    case 'tap':
      return new TapEndpoint(iface, options);
    case 'macvtap':
      return new MacvtapEndpoint(iface, options);
    default:
      throw new InvalidArgumentError(
        'interface',
        `"${iface.name}" is a ${iface.kind} interface: vmpod plugs veth, macvlan, tap and macvtap interfaces into a VM`,
      );
  }
}
