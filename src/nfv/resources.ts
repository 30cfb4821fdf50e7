/**
 * The NFV and volume resources of a sandbox, in the order they are prepared: guest RAM first
 * (hugepages), then passed-through devices, vhost-user NICs and volumes. Each does nothing
 * when its part of the config and its state are empty.
 *
 * @internal
 * @module
 */
import type { SandboxResource } from '../sandbox/resource.js';
import { VolumesResource } from '../volume/resource.js';
import { HugepagesResource } from './hugepages.js';
import { PciDevicesResource } from './pci-devices.js';
import { VhostUserResource } from './vhost-user.js';

export function nfvResources(): SandboxResource[] {
  return [new HugepagesResource(), new PciDevicesResource(), new VhostUserResource(), new VolumesResource()];
}
