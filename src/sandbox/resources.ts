/**
 * Which resources a sandbox has, from its config, in the order they are prepared (and the
 * reverse order they are released). Adding a resource kind means adding one line here.
 *
 * @internal
 * @module
 */
import type { ResolvedSandboxConfig } from './config.js';
import type { SandboxResource } from './resource.js';
import { SharedFsResource } from './shared-fs.js';
import { nfvResources } from '../nfv/resources.js';
import { NetworkResource } from '../network/sandbox-network.js';
import { StreamPortsResource } from './stream-ports.js';
import { GuestRootfsResource } from './guest-rootfs.js';

export function sandboxResources(config: ResolvedSandboxConfig): SandboxResource[] {
  const resources: SandboxResource[] = [];
  if (config.sharedFs) resources.push(new SharedFsResource());
  if (config.guest.rootfsImage !== undefined) resources.push(new GuestRootfsResource());
  resources.push(...nfvResources());
  if (config.network) resources.push(new NetworkResource());
  if ((config.streamPorts ?? 0) > 0) resources.push(new StreamPortsResource());
  return resources;
}
