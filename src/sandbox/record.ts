/**
 * The persisted record of a sandbox (`state.json`) and the one way to change it.
 *
 * The record holds the checked config, the lifecycle state with the operation under way and its
 * owner, the current boot (its folder, and the VM's pid and start time, written the moment QEMU
 * is spawned), each resource's own state, and the containers with what each one's creation made.
 * Every host object is written down BEFORE it is made, so that `delete` (or a cleanup pass after a
 * crash, from any process) always knows what to release.
 *
 * Changes go through {@link Journal.transact}: take the sandbox's lock (flock, dropped by the
 * kernel if the holder dies), read the record afresh, check it, change it, write it atomically,
 * release the lock. Transactions are short and do host work only: nothing in one waits for the
 * guest or the hypervisor's control channel.
 *
 * @internal
 * @module
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomBytes } from 'node:crypto';
import type { VmHandle } from '../hypervisor/hypervisor.js';
import { isAlive, isProcessIdentity, readProcStat, type ProcessIdentity } from '../host/process.js';
import { CorruptStateError, type StateStore } from '../state/store.js';
import { VmpodError } from '../errors.js';
import type { ResolvedSandboxConfig } from './config.js';
import { SANDBOX_STATES, type SandboxState } from './state-machine.js';

/** Format of state.json written by this version. */
export const RECORD_FORMAT = 2;

/** A process that runs an operation on a sandbox, and the operation's own token. */
export interface Owner extends ProcessIdentity {
  /** Random per operation: a process that finds another token knows it was superseded. */
  token: string;
}

/** A lifecycle operation under way (while the state is transitional). */
export interface Operation {
  kind: 'start' | 'stop' | 'delete';
  owner: Owner;
  /** ISO date. */
  since: string;
}

/** One boot of the VM: its private folder, the guest it booted and the VM process. */
export interface BootRecord {
  /** Random; the sockets of this boot live in `dir`, so no boot ever uses another's. */
  id: string;
  /** `<state root>/boots/<id>`: QMP, agent and stream sockets of this boot. */
  dir: string;
  startedAt: string;
  /** The guest assets it booted. */
  guest?: { kernel: string; initramfs: string; id?: string; kernelRelease?: string };
  /** The VM, recorded when its process was spawned (before any wait). */
  vm?: VmHandle;
  /** The writer of the console log (QEMU's output), recorded when spawned. */
  logger?: ProcessIdentity;
}

/** A container of the running VM, as the host knows it (the agent in the guest owns the rest). */
export interface ContainerEntry {
  /** `creating` until the agent made it; `created` after; `deleting` while it is being removed. */
  status: 'creating' | 'created' | 'deleting';
  /** The boot it belongs to (containers die with their VM). */
  boot: string;
  /** The process creating or deleting it. */
  owner?: Owner;
  /** Keys of the share binds it uses (its rootfs share among them), in the order they were made. */
  binds: string[];
  /** Its rootfs image volume (rootfsTransport "block"). */
  rootfsVolume?: string;
  /** The agent was asked to create it (so the guest may have it). */
  inGuest?: boolean;
  /** Host path of the OCI bundle it was made from. */
  bundle?: string;
  /** The image it runs: its chain id (its view's name) and the store holding it (src/image/store.ts reads this). */
  image?: { chainId: string; store: string };
  /** The detached writer of its log (`stdio.detached`), recorded when spawned. */
  logger?: ProcessIdentity;
}

/** The persisted state of one sandbox. */
export interface SandboxRecord {
  format: typeof RECORD_FORMAT;
  id: string;
  state: SandboxState;
  /** ISO dates. */
  createdAt: string;
  updatedAt: string;
  /** The operation under way while `state` is transitional. */
  op?: Operation;
  /** Why the VM last stopped, once it has. */
  stopReason?: { reason: 'requested' | 'unexpected' | 'guest'; detail: string };
  config: ResolvedSandboxConfig;
  /** The current boot (present from `starting` until the VM side is released). */
  boot?: BootRecord;
  /** Persisted state of each resource (see resources/resource.ts), by kind; each parses its own. */
  resources: Record<string, unknown>;
  /** Containers of the current boot, by id. */
  containers: Record<string, ContainerEntry>;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isOwner(v: unknown): v is Owner {
  return isProcessIdentity(v) && typeof (v as Partial<Owner>).token === 'string';
}

/** Checks a parsed state.json (our own file, but it may be truncated, edited, or from another version). */
export function checkRecord(value: unknown, file: string): SandboxRecord {
  const bad = (what: string): never => {
    throw new CorruptStateError(file, what);
  };
  if (!isObject(value)) return bad('not an object');
  if (value['format'] !== RECORD_FORMAT) bad(`format ${String(value['format'])} is not ${RECORD_FORMAT}: written by another vmpod version`);
  if (typeof value['id'] !== 'string') bad('id is missing');
  if (typeof value['state'] !== 'string' || !SANDBOX_STATES.includes(value['state'] as SandboxState) || value['state'] === 'deleted') bad('state is invalid');
  if (!isObject(value['config']) || value['config']['id'] !== value['id']) bad('config is missing or names another sandbox');
  const op = value['op'];
  if (op !== undefined && (!isObject(op) || !['start', 'stop', 'delete'].includes(op['kind'] as string) || !isOwner(op['owner']))) bad('op is invalid');
  const boot = value['boot'];
  if (boot !== undefined) {
    if (!isObject(boot) || typeof boot['id'] !== 'string' || !/^[0-9a-f]{12}$/u.test(boot['id']) || typeof boot['dir'] !== 'string') bad('boot is invalid');
    const vm = (boot as Record<string, unknown>)['vm'];
    if (vm !== undefined && (!isObject(vm) || !isProcessIdentity(vm) || !Array.isArray(vm['controlSockets']))) bad('boot.vm is invalid');
    const logger = (boot as Record<string, unknown>)['logger'];
    if (logger !== undefined && !isProcessIdentity(logger)) bad('boot.logger is invalid');
  }
  if (!isObject(value['resources'])) bad('resources is invalid');
  const containers = value['containers'];
  if (!isObject(containers)) bad('containers is invalid');
  for (const [id, c] of Object.entries(containers as Record<string, unknown>)) {
    if (!isObject(c) || !['creating', 'created', 'deleting'].includes(c['status'] as string) || typeof c['boot'] !== 'string') bad(`containers.${id} is invalid`);
    const entry = c as Record<string, unknown>;
    if (!Array.isArray(entry['binds']) || entry['binds'].some((b) => typeof b !== 'string')) bad(`containers.${id}.binds is invalid`);
    if (entry['owner'] !== undefined && !isOwner(entry['owner'])) bad(`containers.${id}.owner is invalid`);
    if (entry['bundle'] !== undefined && (typeof entry['bundle'] !== 'string' || !entry['bundle'].startsWith('/'))) bad(`containers.${id}.bundle is invalid`);
    if (entry['logger'] !== undefined && !isProcessIdentity(entry['logger'])) bad(`containers.${id}.logger is invalid`);
    const image = entry['image'];
    if (image !== undefined && (!isObject(image) || typeof image['chainId'] !== 'string' || typeof image['store'] !== 'string')) bad(`containers.${id}.image is invalid`);
  }
  return value as unknown as SandboxRecord;
}

let self: ProcessIdentity | undefined;

/** A new owner token for an operation of this process. */
export function newOwner(): Owner {
  self ??= { pid: process.pid, startTime: readProcStat(process.pid)?.startTime ?? -1 };
  return { ...self, token: randomBytes(8).toString('hex') };
}

/** True while the process that owns an operation still runs. */
export function ownerAlive(owner: Owner | undefined): boolean {
  return owner !== undefined && isAlive(owner);
}

/** True when `owner` is this process (any of its operations). */
export function ownedHere(owner: Owner | undefined): boolean {
  return owner !== undefined && owner.pid === process.pid && owner.startTime === (self ?? newOwner()).startTime;
}

/** A new boot id (12 hex characters). */
export function newBootId(): string {
  return randomBytes(6).toString('hex');
}

/** An operation's view of the record changed under it: another process stopped, restarted or deleted the sandbox. */
export class SupersededError extends VmpodError {
  constructor(readonly sandboxId: string, message: string) {
    super('ERR_VMPOD_SUPERSEDED', `sandbox "${sandboxId}": ${message}`);
  }
}

/** A transaction on a sandbox's record: the record as read under the lock, and a way to write it before the end. */
export interface Transaction {
  readonly record: SandboxRecord;
  /** Writes the record now (record-before-change inside a transaction); it is written at the end anyway. */
  save(): Promise<void>;
  /** The record was removed (the sandbox deleted): nothing is written any more. */
  drop(): void;
}

/** Options of {@link Journal.transact}. */
export interface TransactOptions {
  signal?: AbortSignal;
  /** How long to wait for the lock (default 30 s). */
  lockTimeoutMs?: number;
}

/** The transaction the current async flow runs in, if any (so nested calls join it instead of waiting for a lock they hold). */
// A flow started inside a transaction (a socket, a child's exit handler) keeps this context after
// the transaction ended: `open` tells it the transaction is over and it must take the lock itself.
const current = new AsyncLocalStorage<{ journal: Journal; tx: Transaction; open: boolean }>();

/** Access to one sandbox's record: reads, and transactions under its lock. */
export class Journal {
  constructor(
    readonly store: StateStore<SandboxRecord>,
    readonly id: string,
  ) {}

  /** The record as it is on disk now (no lock: a snapshot). */
  read(): Promise<SandboxRecord> {
    return this.store.read(this.id);
  }

  /** True inside a transaction of this journal (in this async flow). */
  get inTransaction(): boolean {
    const active = current.getStore();
    return active?.journal === this && active.open;
  }

  /**
   * Runs `fn` on the record read afresh under the sandbox lock, then writes it. Called from
   * inside a transaction of the same journal, `fn` joins it. Concurrent transactions (other async
   * flows, other processes) wait for the lock.
   */
  async transact<T>(fn: (tx: Transaction) => Promise<T> | T, options: TransactOptions = {}): Promise<T> {
    const active = current.getStore();
    if (active?.journal === this && active.open) return fn(active.tx);
    const lock = await this.store.lock(this.id, {
      ...(options.signal ? { signal: options.signal } : {}),
      timeoutMs: options.lockTimeoutMs ?? 30_000,
    });
    try {
      const record = await this.store.read(this.id);
      const store = this.store;
      let dropped = false;
      const tx: Transaction = {
        record,
        async save() {
          if (dropped) return;
          record.updatedAt = new Date().toISOString();
          await store.write(record);
        },
        drop() {
          dropped = true;
        },
      };
      const context = { journal: this, tx, open: true };
      try {
        const result = await current.run(context, () => fn(tx));
        await tx.save();
        return result;
      } finally {
        context.open = false;
      }
    } finally {
      await lock.release();
    }
  }
}
