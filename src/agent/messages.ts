/**
 * Requests and results of the agent protocol, as TypeScript types, and the schemas that check
 * every result coming from the guest (docs/agent-protocol.md, "Methods").
 *
 * @module
 */
import { array, bool, guestPath, id, int, matching, message, nullable, num, object, oneOf, text, type Schema } from './schema.js';

/** Protocol version this client speaks. */
export const PROTOCOL_VERSION = 1;

/** What the agent said about itself in the handshake. */
export interface AgentInfo {
  /** Protocol version (always {@link PROTOCOL_VERSION} once connected). */
  version: number;
  /** e.g. `vmpod-agent/0.1.0`. */
  agent: string;
  /** The agent's pid in the guest (1 when it is the guest's init). */
  pid: number;
  pid1: boolean;
  /** Whether containers get cgroups (and so limits, stats and OOM reporting). */
  cgroups: boolean;
  /** cgroup2 controllers available to containers, e.g. `memory`, `pids`, `cpu`. */
  controllers: string[];
  /** The agent's state directory; Mount targets must lie under it. */
  stateDir: string;
  maxPayload: number;
  maxDataChunk: number;
  initialWindow: number;
  /**
   * Optional features, e.g. `tty`, `stats`, `mount`, `mount-9p` (Mount type `9p`), `set-time`, `oom`,
   * `pause-container` (PauseContainer, ResumeContainer), `update-container` (UpdateContainer).
   */
  features: string[];
}

/** An absolute guest path without NUL (as the host accepts paths from its users). */
const anyGuestPath = guestPath();
/** A name such as a cgroup controller or a feature: letters, digits, `_`, `.`, `-`. */
const token = matching(/^[A-Za-z0-9_.-]{1,64}$/u, 'a name of letters, digits, "_", "." and "-"', 64);

export const agentInfoSchema: Schema<AgentInfo> = object({
  version: int(0, 0xffff),
  agent: text(256),
  pid: int(1, 0x7fffffff),
  pid1: bool,
  cgroups: bool,
  controllers: array(token, 64),
  stateDir: anyGuestPath,
  maxPayload: int(1),
  maxDataChunk: int(1),
  initialWindow: int(1),
  features: array(token, 256),
});

/** Which stdio pipes a process gets (a process with `process.terminal` gets one pty instead). */
export interface StdioRequest {
  /** Create a stdin pipe (default false: stdin is /dev/null). */
  stdin?: boolean;
  /** Create a stdout pipe (default true; false: /dev/null). */
  stdout?: boolean;
  /** Create a stderr pipe (default true; false: /dev/null). */
  stderr?: boolean;
}

/** The subset of an OCI runtime spec `process` that the agent honours. */
export interface OciProcess {
  terminal?: boolean;
  consoleSize?: { height: number; width: number };
  user?: { uid?: number; gid?: number; umask?: number; additionalGids?: number[] };
  args: string[];
  env?: string[];
  cwd?: string;
  capabilities?: {
    bounding?: string[];
    effective?: string[];
    inheritable?: string[];
    permitted?: string[];
    ambient?: string[];
  };
  rlimits?: { type: string; hard: number; soft: number }[];
  noNewPrivileges?: boolean;
  oomScoreAdj?: number;
  [key: string]: unknown;
}

/** An OCI mount (`mounts[]` of config.json). */
export interface OciMount {
  destination: string;
  type?: string;
  source?: string;
  options?: string[];
}

/** An OCI runtime spec (config.json). Fields the agent does not honour are ignored. */
export interface OciSpec {
  ociVersion: string;
  process: OciProcess;
  root?: { path: string; readonly?: boolean };
  hostname?: string;
  mounts?: OciMount[];
  linux?: {
    namespaces?: { type: string; path?: string }[];
    resources?: {
      memory?: { limit?: number; reservation?: number; swap?: number };
      pids?: { limit: number };
      cpu?: { shares?: number; quota?: number; period?: number; cpus?: string; mems?: string };
      hugepageLimits?: { pageSize: string; limit: number }[];
      unified?: Record<string, string>;
      [key: string]: unknown;
    };
    devices?: { path: string; type: string; major?: number; minor?: number; fileMode?: number; uid?: number; gid?: number }[];
    sysctl?: Record<string, string>;
    maskedPaths?: string[];
    readonlyPaths?: string[];
    rootfsPropagation?: string;
    [key: string]: unknown;
  };
  [key: string]: unknown;
}

/** CreateContainer: a bundle directory in the guest, or an inline config, or both. */
export interface CreateContainerRequest {
  /** Container id: 1-64 characters of [A-Za-z0-9_.-], starting with a letter or digit. */
  id: string;
  /** Absolute guest path of an OCI bundle (config.json + rootfs). */
  bundle?: string;
  /** An OCI spec; takes precedence over the bundle's config.json. */
  config?: OciSpec;
  /** Root filesystem: an absolute guest path, or `builtin` (copy-on-write busybox rootfs). Overrides `root.path`. */
  rootfs?: string;
  /**
   * Use `rootfs` (an absolute guest path) as the read-only lower layer of a copy-on-write
   * rootfs of the container's own, as `builtin` is (agent feature `rootfs-overlay`).
   */
  overlay?: boolean;
  stdio?: StdioRequest;
  /**
   * Outputs of the init that go straight to a stream port instead of a pipe (needs the agent
   * feature `direct-stdio`; docs/agent-protocol.md, "Direct streams").
   */
  direct?: { stdout?: DirectStdioRequest; stderr?: DirectStdioRequest };
}

/** A stream port for one output, and the marker that the agent writes at its start and end. */
export interface DirectStdioRequest {
  /** `vmpod.stream.N`. */
  port: string;
  /** The 32-byte marker as 64 lowercase hex digits. */
  cookie: string;
}

/** Exec: a new process in a running container. */
export interface ExecRequest {
  containerId: string;
  /** Process id within the container, same rules as container ids. */
  execId: string;
  process: OciProcess;
  stdio?: StdioRequest;
}

/** How a process ended. */
export interface ExitStatus {
  /** Exit code; 128 + signal number when it was killed by a signal. */
  exitCode: number;
  /** Signal number that killed it, 0 if it exited. */
  signal: number;
  /** Its cgroup recorded an OOM kill (memory.events oom_kill) while it ran. */
  oomKilled: boolean;
}

export const exitStatusSchema: Schema<ExitStatus> = object({
  exitCode: int(-1, 255 + 128),
  signal: int(0, 128),
  oomKilled: bool,
});

/**
 * A process's state in the agent; `paused` is a container's only (PauseContainer froze its
 * cgroup; agent feature `pause-container`): its exec'd processes stay `running`, frozen with it.
 */
export type ProcessStatus = 'creating' | 'created' | 'running' | 'paused' | 'stopped';
const statusSchema = oneOf(['creating', 'created', 'running', 'paused', 'stopped'] as const);

export interface ExecInfo {
  execId: string;
  pid: number;
  status: ProcessStatus;
  terminal: boolean;
  /** Set once stopped. */
  exit: ExitStatus | null;
}

export interface ContainerInfo {
  id: string;
  status: ProcessStatus;
  /** Pid of the container's init in the agent's pid namespace. */
  pid: number;
  bundle: string;
  /** Guest path of the rootfs, or `builtin`. */
  rootfs: string;
  /** Unix time in ms (guest clock). */
  createdAt: number;
  terminal: boolean;
  exit: ExitStatus | null;
  execs: ExecInfo[];
}

/** `""` (a container made from an inline config) or a guest path. */
const bundleSchema: Schema<string> = (v, path) => (v === '' ? '' : anyGuestPath(v, path));
/** `builtin` or a guest path. */
const rootfsSchema: Schema<string> = (v, path) => (v === 'builtin' ? 'builtin' : anyGuestPath(v, path));

// Ids from the guest pass the same rule as ids from the user: whatever prints or uses them
// (a CLI table, a state file, a path) can rely on it.
export const containerListSchema: Schema<{ containers: ContainerInfo[] }> = object({
  containers: array(
    object({
      id,
      status: statusSchema,
      pid: int(0, 0x7fffffff),
      bundle: bundleSchema,
      rootfs: rootfsSchema,
      createdAt: int(0),
      terminal: bool,
      exit: nullable(exitStatusSchema),
      execs: array(
        object({
          execId: id,
          pid: int(0, 0x7fffffff),
          status: statusSchema,
          terminal: bool,
          exit: nullable(exitStatusSchema),
        }),
        65536,
      ),
    }),
    65536,
  ),
});

/** Container stats from its cgroup; `null` where the guest kernel has no such controller. */
export interface ContainerStats {
  containerId: string;
  /** Unix time in ms (guest clock) when the stats were read. */
  timestamp: number;
  cpu: { usageUsec: number | null; userUsec: number | null; systemUsec: number | null };
  memory: { currentBytes: number | null; maxBytes: number | null; peakBytes: number | null; oomKills: number | null };
  pids: { current: number | null; max: number | null };
}

const counter = nullable(int(0));
export const statsSchema: Schema<ContainerStats> = object({
  containerId: id,
  timestamp: int(0),
  cpu: object({ usageUsec: counter, userUsec: counter, systemUsec: counter }),
  memory: object({ currentBytes: counter, maxBytes: counter, peakBytes: counter, oomKills: counter }),
  pids: object({ current: counter, max: counter }),
});

/**
 * Mount request: a virtio-fs or 9p share, a block device, a tmpfs or a hugetlbfs on a target
 * under the agent's state dir.
 */
export interface MountRequest {
  type: 'virtiofs' | '9p' | 'ext4' | 'tmpfs' | 'hugetlbfs';
  /**
   * The mount tag: of the virtio-fs device (1-36 of `[A-Za-z0-9_.-]`) or of the virtio-9p device
   * (1-31 of the same). Unused for the other types.
   */
  source?: string;
  /** The block device (ext4): exactly one of its PCI address, its virtio serial, or a /dev path. */
  device?: { pciAddress?: string; serial?: string; path?: string };
  /** Absolute guest path under the agent's state dir (e.g. /run/vmpod/shared). */
  target: string;
  readOnly?: boolean;
  /**
   * Mount options, e.g. `size=64m`, `pagesize=2M`, `nosuid`. For 9p the agent always adds
   * `trans=virtio`, and `version=9p2000.L` and `msize=131072` unless given (`cache=loose`, ...
   * pass through); another `trans=` is refused.
   */
  options?: string[];
  /** How long to wait for a hot-plugged block device to appear (default 10000 ms). */
  timeoutMs?: number;
}

export interface MountResult {
  target: string;
  /** The block device that was mounted, e.g. /dev/vdb. */
  device: string | null;
}

/** What `AgentClient.findDevice` looks for. */
export interface FindDeviceRequest {
  /** Guest PCI path: `SS/DD` (root port slot on bus 0, then the slot behind it), up to 8 levels. */
  pciPath: string;
  /** Also wait until the device has a network interface. */
  netdev?: boolean;
  /** How long the agent waits for it (default 10000 ms). */
  timeoutMs?: number;
}

/** Where a device the host plugged landed in the guest (`AgentClient.findDevice`). */
export interface GuestDevice {
  /** Its guest PCI address, DDDD:BB:DD.F. */
  pciAddress: string;
  /** Its directory in the guest's sysfs, e.g. /sys/devices/pci0000:00/0000:00:10.0/0000:01:00.0. */
  sysfsPath: string;
  /** The guest driver bound to it (`virtio-pci`, `vfio-pci`, ...), or null. */
  driver: string | null;
  /** Its network interfaces in the guest (direct, or through its virtio device). */
  netdevs: string[];
}

export const guestDeviceSchema: Schema<GuestDevice> = object({
  pciAddress: matching(/^[0-9a-f]{4}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]$/u, 'a PCI address DDDD:BB:DD.F', 12),
  sysfsPath: matching(/^\/[^\0]*$/u, 'an absolute path'),
  driver: nullable(matching(/^[A-Za-z0-9_.-]{1,64}$/u, 'a driver name', 64)),
  netdevs: array(matching(/^[^/\s\0]{1,15}$/u, 'an interface name', 15), 64),
});

export const mountResultSchema: Schema<MountResult> = object({ target: anyGuestPath, device: nullable(anyGuestPath) });
export const pidSchema: Schema<{ pid: number }> = object({ pid: int(1, 0x7fffffff) });
export const emptySchema: Schema<Record<string, never>> = object({});
export const setTimeSchema: Schema<{ applied: boolean; offsetNs: number }> = object({ applied: bool, offsetNs: num() });

/** Longest agent error message kept (longer ones are cut). */
export const MAX_ERROR_MESSAGE = 4096;

const errorCodes = [
  'INVALID_ARGUMENT',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'FAILED_PRECONDITION',
  'BUSY',
  'UNIMPLEMENTED',
  'PERMISSION_DENIED',
  'INTERNAL',
] as const;

/**
 * An error response's body. The message is shown to people, so it is bounded and its control
 * characters escaped rather than refused (it may quote a value the user gave).
 */
export const errorSchema = object({
  code: oneOf(errorCodes),
  message: message(MAX_ERROR_MESSAGE),
  errno: nullable(matching(/^E[A-Z0-9]{1,31}$/u, 'an errno name such as ENOENT', 32)),
});
