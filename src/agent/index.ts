/**
 * Host side of the vmpod guest agent: {@link AgentClient}, its message types, its stdio
 * streams and its errors. The wire protocol is described in docs/agent-protocol.md.
 *
 * @module
 */
export { AgentClient, DEFAULT_CALL_TIMEOUT_MS, TRANSPORT_HIGH_WATER, type AgentClientEvents, type CallOptions, type ConnectOptions } from './client.js';
export { AgentClosedError, AgentError, AgentProtocolError, type AgentErrorCode } from './errors.js';
export {
  PROTOCOL_VERSION,
  type AgentInfo,
  type ContainerInfo,
  type ContainerStats,
  type CreateContainerRequest,
  type DirectStdioRequest,
  type ExecInfo,
  type ExecRequest,
  type ExitStatus,
  type FindDeviceRequest,
  type GuestDevice,
  type MountRequest,
  type MountResult,
  type OciMount,
  type OciProcess,
  type OciSpec,
  type ProcessStatus,
  type StdioRequest,
} from './messages.js';
export type { ConfigureInterfaceRequest, ConfiguredInterface, GuestNeighbor, GuestNetworkInfo, GuestRoute, NetworkConfigRequest } from './network.js';
export { StdioReadable, StdioWritable, type ProcessStdio } from './stdio.js';
export { checkResources, resourcesFromOci, MAX_CPU_QUOTA_US, MAX_PIDS, MIN_MEMORY_LIMIT, type ContainerResources, type OciResourcesUpdate } from './resources.js';
export { DirectStreamReadable, MarkerMatcher, MARKER_SIZE, newMarker, type DirectStreamOptions } from './direct-stream.js';
export { MAX_PAYLOAD, MAX_DATA_CHUNK, INITIAL_WINDOW } from './framing.js';
