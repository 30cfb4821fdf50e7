/**
 * The seam between a sandbox and the resources around its VM (the shared filesystem, networks,
 * volumes, hugepages, passed-through devices). Each resource kind implements
 * {@link SandboxResource}; the sandbox calls the hooks in order and keeps each resource's own
 * persisted state in its record, so a crash at any point leaves enough for `release` to finish.
 *
 * Order, for each start: `prepare` (host side, before the VM: create objects, return devices),
 * the VM boots, `attach` (guest side, through the agent). On stop: `release('stop')` (VM side
 * only: what a new boot would make again). On delete: `release('delete')` (everything).
 *
 * @module
 */
import type { AgentClient } from '../agent/client.js';
import type { MemoryConfig, VirtualMachine, VmDevice } from '../hypervisor/hypervisor.js';
import type { ResolvedSandboxConfig } from './config.js';

/** What every hook gets. */
export interface ResourceContext {
  readonly sandboxId: string;
  /** The sandbox's private state folder (sockets, logs, mount points live here). */
  readonly dir: string;
  readonly config: ResolvedSandboxConfig;
  /** This resource's persisted state (undefined the first time). */
  readonly state: unknown;
  /**
   * Persists this resource's state in the sandbox record, atomically. Call it BEFORE creating
   * each host object, naming the object, so that `release` finds it after a crash.
   */
  save(state: unknown): Promise<void>;
  readonly signal?: AbortSignal;
}

/** What a resource adds to the VM it is prepared for. */
export interface VmContribution {
  readonly devices?: readonly VmDevice[];
  readonly kernelArgs?: readonly string[];
  /** The guest RAM must be a shared mapping (vhost-user backends map it). */
  readonly sharedMemory?: boolean;
  /** A memory backend (e.g. hugetlbfs); at most one resource may set it. */
  readonly memoryBackend?: MemoryConfig['backend'];
  /** Fault all guest RAM in at start (claim hugepages up front). */
  readonly prealloc?: boolean;
}

/** What `attach` gets once the VM runs and its agent answered. */
export interface GuestContext extends ResourceContext {
  readonly agent: AgentClient;
  readonly vm: VirtualMachine;
  /** The agent's state directory in the guest (mount targets live under it). */
  readonly guestStateDir: string;
}

/** One kind of resource of a sandbox. */
export interface SandboxResource {
  /** Key of its state in the sandbox record, e.g. `sharedFs`, `network`. */
  readonly kind: string;
  /** Host side, before the VM starts. */
  prepare(ctx: ResourceContext): Promise<VmContribution>;
  /** Guest side, once the agent answered. */
  attach?(ctx: GuestContext): Promise<void>;
  /**
   * Releases what the state names: on `stop` what belongs to one boot of the VM, on `delete`
   * everything. Works from the persisted state alone (another process, after a crash), is
   * idempotent, and tries every step even when one fails.
   */
  release(ctx: ResourceContext, phase: 'stop' | 'delete'): Promise<void>;
}
