/**
 * Host networking: namespaces, links, addresses, routes, tc, tap and macvtap fds, and the
 * sandbox {@link Network} (CNI networks, scanned interfaces, endpoints and inter-network models). Every call equals an `ip`/`tc` command, named in its documentation,
 * and is done through the native addon over rtnetlink (no process is spawned).
 *
 * @module
 */
export { Netns, NETNS_DIR, createNetns, openNetns, deleteNetns, listNetns, type NetnsRef, type NetnsOption } from './netns.js';
export {
  addVeth,
  addMacvlan,
  addBridge,
  setLink,
  deleteLink,
  deleteLinkGroup,
  listLinks,
  getLink,
  type Link,
  type LinkKind,
  type LinkAttributes,
  type LinkChange,
  type VethOptions,
  type VethPeer,
  type MacvlanOptions,
  type MacvlanMode,
  type BridgeOptions,
} from './link.js';
export {
  createTap,
  openTap,
  createMacvtap,
  openMacvtap,
  type TapDevice,
  type TapOptions,
  type OpenTapOptions,
  type MacvtapOptions,
  type OpenMacvtapOptions,
  type QueueOptions,
} from './tap.js';
export { addAddress, deleteAddress, listAddresses, type Address, type AddressOptions, type Scope } from './address.js';
export { addRoute, deleteRoute, listRoutes, MAIN_TABLE, LOCAL_TABLE, type Route, type RouteSpec, type RouteType, type RouteProtocol } from './route.js';
export { listNeighbors, type Neighbor, type NeighborState } from './neighbor.js';
export {
  addIngressQdisc,
  deleteIngressQdisc,
  listQdiscs,
  addRedirectFilter,
  listFilters,
  deleteFilters,
  formatHandle,
  parseHandle,
  INGRESS_PARENT,
  type Qdisc,
  type Filter,
  type MirredAction,
} from './tc.js';
export { connectTcFilter, disconnectTcFilter } from './tcfilter.js';
export { openPacketSocket, type PacketSocketOptions } from './packet.js';
export { scanNetns, type Interface } from './scan.js';
export {
  Network,
  NETWORK_LINK_GROUP,
  type NetworkOptions,
  type NetworkEndpoint,
  type NetworkOpenOptions,
  type NetworkRecord,
  type CniAttachmentRecord,
  type CniCheckOutcome,
  type PlugOptions,
} from './network.js';
export {
  createEndpoint,
  isPluggable,
  undoChanges,
  ENDPOINT_KINDS,
  MODELS,
  VethEndpoint,
  MacvlanEndpoint,
  TapEndpoint,
  MacvtapEndpoint,
  type Endpoint,
  type EndpointKind,
  type EndpointRecord,
  type EndpointOrigin,
  type EndpointOptions,
  type EndpointContext,
  type AttachedEndpoint,
  type HostChange,
  type InterNetworkModel,
} from './endpoints/index.js';
export { guestInterface, mergeDns, mirroredAddresses, mirroredRoutes, parseResolvConf, type GuestInterface, type GuestOverrides, type SandboxDns } from './guest-config.js';
export {
  resolveNetworkConfig,
  loadNetworkConfig,
  type SandboxNetworkConfig,
  type ResolvedNetworkConfig,
  type CniNetworkSpec,
  type InterfaceSettings,
} from './sandbox-config.js';
