/**
 * A small Kubernetes CRI client for the tests (crictl and kubelet are not packaged here):
 * @grpc/grpc-js over containerd's socket with our own runtime.v1 subset (cri-api.proto next to
 * this file). Messages are plain objects with camelCase fields; int64 fields come back as numbers,
 * enums as their names, bytes as Buffers, absent fields with their defaults.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const PROTO = path.join(path.dirname(fileURLToPath(import.meta.url)), 'cri-api.proto');

export interface PodSandboxMetadata { name: string; uid: string; namespace: string; attempt?: number }
export interface LinuxContainerResources {
  cpuPeriod?: number;
  cpuQuota?: number;
  cpuShares?: number;
  memoryLimitInBytes?: number;
  oomScoreAdj?: number;
  memorySwapLimitInBytes?: number;
}
export interface PodSandboxConfig {
  metadata: PodSandboxMetadata;
  hostname?: string;
  logDirectory?: string;
  dnsConfig?: { servers?: string[]; searches?: string[]; options?: string[] };
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  linux?: { cgroupParent?: string; resources?: LinuxContainerResources; overhead?: LinuxContainerResources };
}
export interface ContainerConfig {
  metadata: { name: string; attempt?: number };
  image: { image: string };
  command?: string[];
  args?: string[];
  workingDir?: string;
  envs?: { key: string; value: string }[];
  mounts?: { containerPath: string; hostPath: string; readonly?: boolean }[];
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  logPath?: string;
  stdin?: boolean;
  stdinOnce?: boolean;
  tty?: boolean;
  linux?: { resources?: LinuxContainerResources };
}
export type ContainerState = 'CONTAINER_CREATED' | 'CONTAINER_RUNNING' | 'CONTAINER_EXITED' | 'CONTAINER_UNKNOWN';
export interface PodSandboxStatus {
  id: string;
  metadata: PodSandboxMetadata | null;
  state: 'SANDBOX_READY' | 'SANDBOX_NOTREADY';
  createdAt: number;
  network: { ip: string; additionalIps: { ip: string }[] } | null;
  runtimeHandler: string;
  annotations: Record<string, string>;
}
export interface ContainerStatus {
  id: string;
  state: ContainerState;
  createdAt: number;
  startedAt: number;
  finishedAt: number;
  exitCode: number;
  reason: string;
  message: string;
  logPath: string;
}
export interface UInt64Value { value: number }
export interface ContainerStats {
  attributes: { id: string } | null;
  cpu: { timestamp: number; usageCoreNanoSeconds: UInt64Value | null; usageNanoCores: UInt64Value | null } | null;
  memory: { timestamp: number; workingSetBytes: UInt64Value | null; usageBytes: UInt64Value | null; rssBytes: UInt64Value | null } | null;
}
export interface CriContainer { id: string; podSandboxId: string; state: ContainerState; metadata: { name: string } | null }

/** A CRI call that failed: the gRPC status code and message containerd sent. */
export class CriError extends Error {
  constructor(readonly method: string, readonly code: number, readonly details: string) {
    super(`CRI ${method}: ${grpc.status[code] ?? code}: ${details}`);
  }
}

export interface CriClient {
  version(): Promise<{ version: string; runtimeName: string; runtimeVersion: string; runtimeApiVersion: string }>;
  runPodSandbox(config: PodSandboxConfig, runtimeHandler: string): Promise<string>;
  stopPodSandbox(id: string): Promise<void>;
  removePodSandbox(id: string): Promise<void>;
  podSandboxStatus(id: string): Promise<PodSandboxStatus>;
  /** The status and containerd's verbose `info` (its "info" key holds a JSON document: runtimeSpec, pid...). */
  podSandboxStatusVerbose(id: string): Promise<{ status: PodSandboxStatus; info: Record<string, string> }>;
  listPodSandbox(): Promise<{ id: string; state: string; runtimeHandler: string }[]>;
  createContainer(podId: string, config: ContainerConfig, sandboxConfig: PodSandboxConfig): Promise<string>;
  startContainer(id: string): Promise<void>;
  stopContainer(id: string, timeoutSeconds: number): Promise<void>;
  removeContainer(id: string): Promise<void>;
  containerStatus(id: string): Promise<ContainerStatus>;
  listContainers(filter?: { id?: string; podSandboxId?: string }): Promise<CriContainer[]>;
  execSync(id: string, cmd: string[], timeoutSeconds: number): Promise<{ stdout: Buffer; stderr: Buffer; exitCode: number }>;
  containerStats(id: string): Promise<ContainerStats>;
  listImages(): Promise<{ id: string; repoTags: string[] }[]>;
  imageStatus(image: string): Promise<{ id: string; repoTags: string[] } | null>;
  close(): void;
}

type Unary = (request: object, metadata: grpc.Metadata, options: grpc.CallOptions, callback: (err: grpc.ServiceError | null, response?: unknown) => void) => void;
type ServiceClient = grpc.Client & Record<string, Unary>;

/** Connects to a CRI endpoint (containerd's gRPC socket). Calls time out after `timeoutMs`. */
export function criClient(socket: string, options: { timeoutMs?: number } = {}): CriClient {
  const definition = protoLoader.loadSync(PROTO, { keepCase: false, longs: Number, enums: String, bytes: Buffer, defaults: true, oneofs: true });
  const pkg = grpc.loadPackageDefinition(definition) as unknown as { runtime: { v1: Record<string, grpc.ServiceClientConstructor> } };
  const address = `unix://${socket}`;
  const credentials = grpc.credentials.createInsecure();
  const runtime = new pkg.runtime.v1['RuntimeService']!(address, credentials) as unknown as ServiceClient;
  const images = new pkg.runtime.v1['ImageService']!(address, credentials) as unknown as ServiceClient;
  const timeoutMs = options.timeoutMs ?? 240_000;

  function call<T>(client: ServiceClient, method: string, request: object, ms = timeoutMs): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const fn = client[method];
      if (fn === undefined) throw new Error(`no CRI method ${method}`);
      fn.call(client, request, new grpc.Metadata(), { deadline: Date.now() + ms }, (err, response) => {
        if (err) reject(new CriError(method, err.code, err.details));
        else resolve(response as T);
      });
    });
  }

  return {
    version: () => call(runtime, 'version', { version: 'v1' }),
    runPodSandbox: async (config, runtimeHandler) => (await call<{ podSandboxId: string }>(runtime, 'runPodSandbox', { config, runtimeHandler })).podSandboxId,
    stopPodSandbox: async (podSandboxId) => void (await call(runtime, 'stopPodSandbox', { podSandboxId })),
    removePodSandbox: async (podSandboxId) => void (await call(runtime, 'removePodSandbox', { podSandboxId })),
    podSandboxStatus: async (podSandboxId) => (await call<{ status: PodSandboxStatus }>(runtime, 'podSandboxStatus', { podSandboxId })).status,
    podSandboxStatusVerbose: (podSandboxId) => call(runtime, 'podSandboxStatus', { podSandboxId, verbose: true }),
    listPodSandbox: async () => (await call<{ items: { id: string; state: string; runtimeHandler: string }[] }>(runtime, 'listPodSandbox', {})).items,
    createContainer: async (podSandboxId, config, sandboxConfig) =>
      (await call<{ containerId: string }>(runtime, 'createContainer', { podSandboxId, config, sandboxConfig })).containerId,
    startContainer: async (containerId) => void (await call(runtime, 'startContainer', { containerId })),
    stopContainer: async (containerId, timeout) => void (await call(runtime, 'stopContainer', { containerId, timeout }, timeoutMs + timeout * 1000)),
    removeContainer: async (containerId) => void (await call(runtime, 'removeContainer', { containerId })),
    containerStatus: async (containerId) => (await call<{ status: ContainerStatus }>(runtime, 'containerStatus', { containerId })).status,
    listContainers: async (filter = {}) => (await call<{ containers: CriContainer[] }>(runtime, 'listContainers', { filter })).containers,
    execSync: (containerId, cmd, timeout) => call(runtime, 'execSync', { containerId, cmd, timeout }, timeoutMs + timeout * 1000),
    containerStats: async (containerId) => (await call<{ stats: ContainerStats }>(runtime, 'containerStats', { containerId })).stats,
    listImages: async () => (await call<{ images: { id: string; repoTags: string[] }[] }>(images, 'listImages', {})).images,
    imageStatus: async (image) => (await call<{ image: { id: string; repoTags: string[] } | null }>(images, 'imageStatus', { image: { image } })).image,
    close: () => {
      runtime.close();
      images.close();
    },
  };
}

/**
 * One line of a CRI container log: `TIMESTAMP STREAM TAG CONTENT` (RFC 3339 nano time, stdout or
 * stderr, F for a full line or P for a partial one), as containerd's CRI plugin writes them.
 */
export interface CriLogLine { time: string; stream: 'stdout' | 'stderr'; tag: 'F' | 'P'; content: string }

/** Parses a CRI log file's text; throws on a line that is not in the CRI format. */
export function parseCriLog(text: string): CriLogLine[] {
  return text
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => {
      const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)) (stdout|stderr) (F|P) (.*)$/u.exec(line);
      if (m === null) throw new Error(`not a CRI log line: ${JSON.stringify(line)}`);
      return { time: m[1]!, stream: m[2] as 'stdout' | 'stderr', tag: m[3] as 'F' | 'P', content: m[4]! };
    });
}
