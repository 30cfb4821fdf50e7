/**
 * `sandbox.inspect()` and `container.inspect()`: what vmpod knows of a sandbox or a container,
 * as plain JSON-serialisable objects (`docker inspect`). Built from what the record and the
 * agent already hold (the same views as `networks()`, `volumes()`, `devices()` and
 * `containers()`), nothing of its own.
 *
 * @module
 */
import type { ContainerInfo, ContainerStats, ExecInfo, ExitStatus } from '../agent/messages.js';
import { isAlive, type ProcessIdentity } from '../host/process.js';
import type { CallOptions } from '../options.js';
import type { AgentClient } from '../agent/client.js';
import { NotFoundError } from '../errors.js';
import type { ResolvedSandboxConfig } from './config.js';
import type { SandboxRecord } from './record.js';
import { HUGEPAGES_KIND } from './resources/hugepages.js';
import { describeSandboxNetwork, NETWORK_KIND, type SandboxInterfaceInfo } from './resources/network.js';
import { pciDevices, PCI_DEVICES_KIND } from './resources/pci-devices.js';
import { SHARED_FS_KIND } from './resources/share.js';
import { vhostUserNics, VHOST_USER_KIND } from './resources/vhost-user.js';
import { volumesState, VOLUMES_KIND } from './resources/volumes/index.js';
import type { ContainerState, SandboxState } from './state-machine.js';
import { volumeInfo, type SandboxDevices, type StopInfo, type VolumeInfo } from './types.js';

/** A host process of a sandbox's boot. */
export interface InspectedProcess {
  pid: number;
  /** Whether it runs now (checked against its recorded start time, so a reused pid is not it). */
  alive: boolean;
}

/** What {@link Sandbox.inspect} reports. */
export interface SandboxInspection {
  id: string;
  /** The lifecycle state in the record. */
  state: SandboxState;
  /** ISO dates. */
  createdAt: string;
  updatedAt: string;
  /** The operation under way while the state is transitional, and the process running it. */
  operation?: { kind: 'start' | 'stop' | 'delete'; pid: number; since: string };
  /** Why the VM last stopped, once it has. */
  stopReason?: StopInfo;
  /** The state folder, and the console log in it. */
  dir: string;
  consoleLog: string;
  /** The checked configuration, every default filled in. */
  config: ResolvedSandboxConfig;
  /** The current boot: when it started and the guest it booted. */
  boot?: { id: string; startedAt: string; kernel?: string; initramfs?: string; kernelRelease?: string };
  /** What it holds on the host. */
  resources: {
    cpus: number;
    memoryMiB: number;
    machine: ResolvedSandboxConfig['machine'];
    /** Host hugepages reserved for its RAM and hugepage volumes in this boot. */
    hugepageBytes?: number;
    /** Its host processes in this boot. */
    processes: { hypervisor?: InspectedProcess; logger?: InspectedProcess; virtiofsd?: InspectedProcess };
  };
  /** As {@link Sandbox.volumes}. */
  volumes: VolumeInfo[];
  /** As {@link Sandbox.devices}. */
  devices: SandboxDevices;
  /** As {@link Sandbox.networks}. */
  networks: SandboxInterfaceInfo[];
  /** The guest's addresses (CIDR) on all its interfaces, in interface order. */
  addresses: string[];
  /** Its containers as the agent reports them, while it runs (absent otherwise). */
  containers?: ContainerInspection[];
}

/** What {@link Container.inspect} reports. */
export interface ContainerInspection {
  id: string;
  /** The sandbox it runs in. */
  sandbox: string;
  state: Exclude<ContainerState, 'deleted'>;
  /** Pid of its init in the guest (the agent's pid namespace). */
  pid: number;
  /** The guest path of its bundle (`""` for a container made from an inline config). */
  bundle: string;
  /** The guest path of its rootfs, or `builtin`. */
  rootfs: string;
  /** ISO date (guest clock). */
  createdAt: string;
  terminal: boolean;
  /** The init's exit status once it exited, else null. */
  exit: ExitStatus | null;
  /** Processes exec'd into it. */
  execs: ExecInfo[];
  /** Its cgroup's CPU, memory and pids, while it runs (only from `container.inspect()`). */
  stats?: ContainerStats;
}

function processInfo(identity: ProcessIdentity | undefined): InspectedProcess | undefined {
  return identity && { pid: identity.pid, alive: isAlive(identity) };
}

/** The record's part of a sandbox's inspection (no guest needed). */
export function inspectRecord(record: SandboxRecord, dir: string, consoleLog: string): SandboxInspection {
  const networks = describeSandboxNetwork(record.resources[NETWORK_KIND]);
  const processes: SandboxInspection['resources']['processes'] = {};
  const hypervisor = processInfo(record.boot?.vm);
  if (hypervisor) processes.hypervisor = hypervisor;
  const logger = processInfo(record.boot?.logger);
  if (logger) processes.logger = logger;
  const virtiofsd = processInfo((record.resources[SHARED_FS_KIND] as { virtiofsd?: ProcessIdentity } | undefined)?.virtiofsd);
  if (virtiofsd) processes.virtiofsd = virtiofsd;
  const inspection: SandboxInspection = {
    id: record.id,
    state: record.state,
    createdAt: record.createdAt,
    updatedAt: record.updatedAt,
    dir,
    consoleLog,
    config: structuredClone(record.config),
    resources: { cpus: record.config.cpus, memoryMiB: record.config.memoryMiB, machine: record.config.machine, processes },
    volumes: volumesState(record.resources[VOLUMES_KIND]).volumes.filter((v) => v.pending === undefined).map(volumeInfo),
    devices: { vhostUser: vhostUserNics(record.resources[VHOST_USER_KIND]), pci: pciDevices(record.resources[PCI_DEVICES_KIND]) },
    networks,
    addresses: networks.flatMap((n) => n.addresses),
  };
  if (record.op) inspection.operation = { kind: record.op.kind, pid: record.op.owner.pid, since: record.op.since };
  if (record.stopReason) inspection.stopReason = { ...record.stopReason };
  if (record.boot) {
    const { id, startedAt, guest } = record.boot;
    inspection.boot = { id, startedAt, ...(guest?.kernel ? { kernel: guest.kernel, initramfs: guest.initramfs } : {}), ...(guest?.kernelRelease ? { kernelRelease: guest.kernelRelease } : {}) };
  }
  const claim = (record.resources[HUGEPAGES_KIND] as { claim?: { sizeBytes?: unknown } } | undefined)?.claim;
  if (typeof claim?.sizeBytes === 'number' && record.boot) inspection.resources.hugepageBytes = claim.sizeBytes;
  return JSON.parse(JSON.stringify(inspection)) as SandboxInspection; // plain data, nothing shared with the record
}

/** A container as the agent reports it, in the shape of an inspection. */
export function inspectContainerInfo(sandbox: string, info: ContainerInfo): ContainerInspection {
  return {
    id: info.id,
    sandbox,
    state: info.status === 'running' || info.status === 'paused' || info.status === 'stopped' ? info.status : 'created',
    pid: info.pid,
    bundle: info.bundle,
    rootfs: info.rootfs,
    createdAt: new Date(info.createdAt).toISOString(),
    terminal: info.terminal,
    exit: info.exit && { ...info.exit },
    execs: info.execs.map((e) => ({ ...e, exit: e.exit && { ...e.exit } })),
  };
}

/** One container's inspection, asked of the agent (with its stats while it runs). */
export async function inspectContainer(sandbox: string, agent: AgentClient, id: string, options: CallOptions = {}): Promise<ContainerInspection> {
  const info = (await agent.listContainers(options)).find((c) => c.id === id);
  if (!info) throw new NotFoundError('container', id);
  const inspection = inspectContainerInfo(sandbox, info);
  if (info.status === 'running' || info.status === 'paused') {
    // It may exit between the two calls: then it has no stats, which is what it reports.
    const stats = await agent.stats(id, options).catch((error: unknown) => {
      if (error instanceof Error && 'code' in error && (error as { code: unknown }).code === 'ERR_VMPOD_AGENT') return undefined;
      throw error;
    });
    if (stats) inspection.stats = stats;
  }
  return inspection;
}
