/**
 * The seam between a sandbox and the resources around its VM (the shared filesystem, networks,
 * volumes, hugepages, passed-through devices, stream ports). Each resource kind implements
 * {@link SandboxResource} and keeps a typed state of its own in the sandbox record, which it
 * parses itself (a record is read from disk: anything may be there).
 *
 * Order, for each start: `prepare` (host side, before the VM: create objects, return devices),
 * the VM boots, `attach` (guest side, through the agent). On stop: `release('stop')` (what a new
 * boot would make again). On delete: `release('delete')` (everything). Resources change their
 * state only through {@link ResourceContext.update}, BEFORE each host object is made, so that a
 * crash at any point leaves enough for `release` to finish, from any process.
 *
 * @module
 */
import type { AgentClient } from '../../agent/client.js';
import type { MemoryConfig, VirtualMachine, VmDevice } from '../../hypervisor/hypervisor.js';
import { InvalidStateError, NotFoundError } from '../../errors.js';
import type { ResolvedSandboxConfig } from '../config.js';
import { newOwner, ownerAlive, type Owner } from '../record.js';
import type { Share } from './share.js';

/** The boot a context belongs to. */
export interface BootInfo {
  readonly id: string;
  /** The boot's private folder (its sockets). */
  readonly dir: string;
}

/** What every hook gets. */
export interface ResourceContext<S> {
  readonly sandboxId: string;
  /** The sandbox's private state folder (logs, mount points, caches live here). */
  readonly dir: string;
  readonly config: ResolvedSandboxConfig;
  /** The current boot (undefined when releasing a sandbox that never booted). */
  readonly boot: BootInfo | undefined;
  /** This resource's state as last read or written by this context. */
  readonly state: S;
  /**
   * Changes this resource's state in the record: under the sandbox lock, on the record read
   * afresh and checked (the operation still owns the sandbox), written atomically afterwards.
   * Record each host object BEFORE making it (`save()` writes the state as it is now, inside the
   * same transaction). `fn` must do host work only: nothing that waits for the guest.
   */
  update<T>(fn: (state: S, save: () => Promise<void>) => T | Promise<T>): Promise<T>;
  /** The sandbox's share, for resources that bind host directories into it (undefined without `sharedFs`). */
  readonly share: Share | undefined;
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
  /** Host fds the hypervisor inherits (e.g. tap queues); closed here once it has its own copies. */
  readonly fds?: readonly number[];
}

/** What `attach` and hotplug operations get once the VM runs and its agent answered. */
export interface GuestContext<S> extends ResourceContext<S> {
  readonly agent: AgentClient;
  readonly vm: VirtualMachine;
  /** The agent's state directory in the guest (mount targets live under it). */
  readonly guestStateDir: string;
}

/** One kind of resource of a sandbox. */
export interface SandboxResource<S = unknown> {
  /** Key of its state in the sandbox record, e.g. `sharedFs`, `network`. */
  readonly kind: string;
  /** Its state from the record (undefined the first time); checks what it uses. */
  parse(value: unknown): S;
  /** Host side, before the VM starts. */
  prepare(ctx: ResourceContext<S>): Promise<VmContribution>;
  /** Guest side, once the agent answered. */
  attach?(ctx: GuestContext<S>): Promise<void>;
  /**
   * Releases what the state names: on `stop` what belongs to one boot of the VM, on `delete`
   * everything. Works from the persisted state alone (another process, after a crash), is
   * idempotent, and tries every step even when one fails (see {@link runAll}).
   */
  release(ctx: ResourceContext<S>, phase: 'stop' | 'delete'): Promise<void>;
}

/** `{ signal }` of a context, for agent and VM calls. */
export function callOptions(ctx: { signal?: AbortSignal }): { signal?: AbortSignal } {
  return ctx.signal ? { signal: ctx.signal } : {};
}

/**
 * An entry of a resource's state that an operation is adding or removing: `pending` names the
 * operation's owner from the moment the entry is recorded (before anything is made) until the
 * operation commits. Another process leaves it alone while that owner lives; once the owner is
 * dead, the entry is what a crash left, to be released.
 */
export interface PendingEntry {
  pending?: Owner;
}

/** Throws when `entry` belongs to a live operation of another process (or another call of this one). */
export function assertNotPending(entry: PendingEntry, what: string): void {
  if (entry.pending && ownerAlive(entry.pending)) {
    throw new InvalidStateError(what, 'changing', 'settled', { hint: `another call (pid ${entry.pending.pid}) is adding or removing it` });
  }
}

/**
 * The one shape of a hot unplug: under the lock the entry is marked pending (another process
 * sees it going), the device is unplugged without the lock (QMP `device_del`, waiting for the
 * guest), then under the lock `release` gives back its host side and drops it from the state.
 * An unplug that fails clears the mark and leaves the entry as it was.
 */
export async function unplugEntry<S, E extends PendingEntry & { id: string }>(
  ctx: GuestContext<S>,
  id: string,
  what: string,
  entries: (state: S) => E[],
  release: (state: S, entry: E) => void | Promise<void>,
): Promise<void> {
  await ctx.update((state) => {
    const entry = entries(state).find((e) => e.id === id);
    if (!entry) throw new NotFoundError(what, id);
    assertNotPending(entry, `${what} "${id}"`);
    entry.pending = newOwner();
  });
  try {
    await ctx.vm.unplug(id, callOptions(ctx));
  } catch (error) {
    await ctx.update((state) => void delete entries(state).find((e) => e.id === id)?.pending);
    throw error;
  }
  await ctx.update(async (state) => {
    const entry = entries(state).find((e) => e.id === id);
    if (entry) await release(state, entry);
  });
}
