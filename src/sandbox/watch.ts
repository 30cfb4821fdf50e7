/**
 * Events of the sandboxes of a state directory, for processes that did not make them: an
 * orchestrator follows what `vmpod run`, another script or another host process does, from the
 * sandboxes' records alone ({@link SandboxWatcher}, `Sandbox.watch()`, `vmpod events`).
 *
 * The mechanism: every record (`sandboxes/ID/state.json`) is written whole, by rename. The
 * watcher keeps one small snapshot per sandbox (its state, its containers and what is known of
 * them, its devices), reads a record again when inotify (`fs.watch` on `sandboxes/` and on each
 * sandbox's folder) says it changed, and turns the difference between the snapshot and the record
 * it read into events. `fs.watch` can miss or merge changes, so every sandbox is also read again
 * at a fixed period (`rescanMs`). What this gives (docs/events.md says it to users):
 *
 * - **states, not transitions**: a record that went through several states between two reads is
 *   reported in the state it has when read; the states in between leave no trace;
 * - **order per sandbox**: one sandbox's events come in the order its records were read, and in
 *   a fixed order within one read; nothing orders the events of different sandboxes;
 * - **once per change seen**: the same record read twice gives no events; a watcher does not
 *   report what happened before it started (unless `since` asks for a replay of the records),
 *   nor anything between its close and the next watcher's start;
 * - **hostile records**: a record that cannot be read or checked gives one `error` event (again
 *   only when it changes) and the watch goes on with the sandbox's last good snapshot.
 *
 * A container's start and exit are in the record when a vmpod process saw them: the process that
 * started it records the start, any process that waits for it (its `Container`'s exit watch)
 * records the exit ({@link recordContainerStarted}, {@link recordContainerExit}). With
 * `waitExits` the watcher itself waits for the started containers of running sandboxes (through
 * an agent port of its own), so that their exits are recorded even when nobody else waits.
 *
 * @module
 */
import fs from 'node:fs';
import path from 'node:path';
import { EventEmitter } from 'eventemitter3';
import type { AgentClient } from '../agent/client.js';
import type { ExitStatus } from '../agent/messages.js';
import { InvalidArgumentError, NotFoundError, VmpodError } from '../errors.js';
import type { Hypervisor } from '../hypervisor/hypervisor.js';
import type { StateStore } from '../state/store.js';
import * as validate from '../validate.js';
import type { Journal, SandboxRecord } from './record.js';
import { stateRootOf, storeAt } from './registry.js';
import { describeSandboxNetwork, NETWORK_KIND } from './resources/network.js';
import { PCI_DEVICES_KIND, pciDevices } from './resources/pci-devices.js';
import { VHOST_USER_KIND, vhostUserNics } from './resources/vhost-user.js';
import { VOLUMES_KIND, volumesState } from './resources/volumes/index.js';
import { VM_STATES, type SandboxState } from './state-machine.js';

/** What is recorded of a container's init beyond its entry: when it started, how it exited. @internal */
export interface ContainerLifecycle {
  /** ISO date of its start, written by the process that started it. */
  startedAt?: string;
  /** Its exit, written by a process that saw it. */
  exit?: ExitStatus & { at: string };
}

/** A sandbox's state as an event: the state its record was read in. */
export interface SandboxStateEvent {
  type: 'sandbox';
  /** The state it was found in (`created` when it first appears), or `deleted` once its record is gone. */
  action: SandboxState;
  sandbox: string;
  /** ISO date: the record's write (its creation for `created`), or when the watcher saw it gone. */
  time: string;
  /** Why it stopped (with `stopped`). */
  stopReason?: { reason: 'requested' | 'unexpected' | 'guest'; detail: string };
}

/** A container of a sandbox's current boot. */
export interface ContainerEvent {
  type: 'container';
  /** `created` (the agent made it), `started`, `exited` (with `exitStatus`), `deleted` (also when its VM stopped). */
  action: 'created' | 'started' | 'exited' | 'deleted';
  sandbox: string;
  container: string;
  /** ISO date: the recorded start or exit, else the record's write, or when the watcher saw it gone. */
  time: string;
  exitStatus?: ExitStatus;
}

/** A device of a sandbox's VM appeared in its record or left it. */
export interface DeviceEvent {
  type: 'device';
  action: 'added' | 'removed';
  sandbox: string;
  time: string;
  /** `network`: an interface (by name); `volume` (by name); `vhost-user`, `pci`: by device id. */
  device: { kind: 'network' | 'volume' | 'vhost-user' | 'pci'; id: string; hotplugged?: boolean };
}

/** A record that could not be read, a watch that failed: reported, and the watch goes on. */
export interface WatchErrorEvent {
  type: 'error';
  /** The sandbox whose record it is, if it is one's. */
  sandbox?: string;
  time: string;
  error: Error;
}

/** An event of {@link SandboxWatcher}. */
export type WatchEvent = SandboxStateEvent | ContainerEvent | DeviceEvent | WatchErrorEvent;

/** Events of a {@link SandboxWatcher}: every event under `event`, and each under its type. */
export interface SandboxWatcherEvents {
  event: (event: WatchEvent) => void;
  sandbox: (event: SandboxStateEvent) => void;
  container: (event: ContainerEvent) => void;
  device: (event: DeviceEvent) => void;
  error: (event: WatchErrorEvent) => void;
}

/** Options of `Sandbox.watch()`. */
export interface WatchOptions {
  /** State directory root (default `/run/vmpod`, or `$VMPOD_STATE_DIR`). */
  stateDir?: string;
  /** Closes the watcher when aborted. */
  signal?: AbortSignal;
  /**
   * Replays what the records show from this moment on (a Date, an ISO date or milliseconds
   * since the epoch): each existing sandbox's creation, its current state, its current
   * containers and devices, whose recorded moment is not before it. Without it, only changes
   * made after the watcher started are reported.
   */
  since?: Date | string | number;
  /** How often every record is read again, whatever inotify said (default 2000 ms; 50 to 60000). */
  rescanMs?: number;
  /**
   * Wait for the started containers of running sandboxes, so that their exits are recorded (and
   * reported) even when no other process waits for them. Takes one agent port of each such
   * sandbox while it runs (the watcher attaches to it). Default false.
   */
  waitExits?: boolean;
  /** The VM backend used to attach with `waitExits` (default: QEMU). */
  hypervisor?: Hypervisor;
}

/** The most events a watcher holds for an iterator that does not take them; the oldest go first. */
export const WATCH_QUEUE_LIMIT = 10_000;

/** Events were dropped because an iterator did not take them. */
export class WatchOverflowError extends VmpodError {
  constructor(readonly dropped: number) {
    super('ERR_VMPOD_WATCH_OVERFLOW', `${dropped} events were dropped: the iterator did not take them (it holds at most ${WATCH_QUEUE_LIMIT})`);
  }
}

/** What {@link SandboxWatcher} needs to attach to a sandbox for `waitExits` (given by `Sandbox.watch`, which has the class). @internal */
export interface ExitWaitTarget {
  agent(options?: { signal?: AbortSignal }): Promise<AgentClient>;
  containerExited(id: string, status: ExitStatus): void;
  detach(): void;
}

/** A container as a snapshot holds it. */
interface ContainerSeen {
  created: boolean;
  started: boolean;
  exited: boolean;
}

/** What the watcher last saw of a sandbox (bounded: one line per live container and device). */
interface Snapshot {
  createdAt: string;
  state: SandboxState;
  boot: string | undefined;
  containers: Map<string, ContainerSeen>;
  devices: Map<string, DeviceEvent['device']>;
}

/** Parses `since`: a Date, an ISO date, or milliseconds since the epoch. @internal */
export function parseSince(since: Date | string | number, field = 'since'): number {
  const ms = since instanceof Date ? since.getTime() : typeof since === 'number' ? since : Date.parse(since);
  if (!Number.isFinite(ms)) throw new InvalidArgumentError(field, `${JSON.stringify(String(since))} is not a date`);
  return ms;
}

function isDate(value: unknown): value is string {
  return typeof value === 'string' && Number.isFinite(Date.parse(value));
}

/** The recorded start and exit of a container entry, if they are well formed. @internal */
export function containerLifecycle(entry: unknown): { startedAt?: string; exit?: ExitStatus & { at: string } } {
  const e = (typeof entry === 'object' && entry !== null ? entry : {}) as Record<string, unknown>;
  const out: { startedAt?: string; exit?: ExitStatus & { at: string } } = {};
  if (isDate(e['startedAt'])) out.startedAt = e['startedAt'];
  const x = e['exit'] as Record<string, unknown> | undefined;
  if (
    typeof x === 'object' && x !== null && isDate(x['at']) &&
    Number.isInteger(x['exitCode']) && Number.isInteger(x['signal']) && typeof x['oomKilled'] === 'boolean'
  ) {
    out.exit = { exitCode: x['exitCode'] as number, signal: x['signal'] as number, oomKilled: x['oomKilled'] as boolean, at: x['at'] };
  }
  return out;
}

/** The devices a record shows, by `kind:id`. */
function devicesOf(record: SandboxRecord): Map<string, DeviceEvent['device']> {
  const devices = new Map<string, DeviceEvent['device']>();
  const add = (device: DeviceEvent['device']): void => void devices.set(`${device.kind}:${device.id}`, device);
  for (const nic of describeSandboxNetwork(record.resources[NETWORK_KIND])) add({ kind: 'network', id: nic.name });
  for (const v of volumesState(record.resources[VOLUMES_KIND]).volumes) {
    if (v.pending === undefined) add({ kind: 'volume', id: v.spec.name, hotplugged: v.hotplugged === true });
  }
  for (const nic of vhostUserNics(record.resources[VHOST_USER_KIND])) add({ kind: 'vhost-user', id: nic.id, hotplugged: nic.hotplugged === true });
  for (const d of pciDevices(record.resources[PCI_DEVICES_KIND])) add({ kind: 'pci', id: d.id, hotplugged: (d as { hotplugged?: boolean }).hotplugged === true });
  return devices;
}

/**
 * The events that take a sandbox from snapshot `before` (undefined: not seen yet) to `record`
 * (undefined: its record is gone), and the snapshot after them. Pure: `now` stamps what has no
 * recorded moment of its own (a deletion).
 *
 * @internal
 */
export function diffRecord(
  id: string,
  before: Snapshot | undefined,
  record: SandboxRecord | undefined,
  now: string,
): { events: Exclude<WatchEvent, WatchErrorEvent>[]; after: Snapshot | undefined } {
  const events: Exclude<WatchEvent, WatchErrorEvent>[] = [];
  const down = (snapshot: Snapshot, time: string, out: Exclude<WatchEvent, WatchErrorEvent>[]): void => {
    for (const [container, seen] of snapshot.containers) if (seen.created) out.push({ type: 'container', action: 'deleted', sandbox: id, container, time });
    for (const device of snapshot.devices.values()) out.push({ type: 'device', action: 'removed', sandbox: id, time, device });
  };
  if (before && (!record || record.createdAt !== before.createdAt)) {
    // Gone, or deleted and made again under the same id between two reads.
    down(before, now, events);
    events.push({ type: 'sandbox', action: 'deleted', sandbox: id, time: now });
    before = undefined;
  }
  if (!record) return { events, after: undefined };
  const time = record.updatedAt;
  // A sandbox seen for the first time was created (at its recorded moment), whatever its state now.
  const created: SandboxStateEvent | undefined = before ? undefined : { type: 'sandbox', action: 'created', sandbox: id, time: record.createdAt };
  const changed: SandboxStateEvent[] = [];
  if ((before?.state ?? 'created') !== record.state) {
    const event: SandboxStateEvent = { type: 'sandbox', action: record.state, sandbox: id, time };
    if (record.state === 'stopped' && record.stopReason) event.stopReason = { reason: record.stopReason.reason, detail: record.stopReason.detail };
    changed.push(event);
  }
  // Containers belong to one boot: a new boot's entries are new containers.
  const sameBoot = before !== undefined && before.boot === record.boot?.id;
  const oldContainers = sameBoot ? before!.containers : new Map<string, ContainerSeen>();
  const up: Exclude<WatchEvent, WatchErrorEvent>[] = [];
  const gone: Exclude<WatchEvent, WatchErrorEvent>[] = [];
  // The containers of a boot that ended between two reads went before anything else happened.
  const ended: Exclude<WatchEvent, WatchErrorEvent>[] = [];
  if (before && !sameBoot) {
    for (const [container, seen] of before.containers) if (seen.created) ended.push({ type: 'container', action: 'deleted', sandbox: id, container, time });
  }
  const containers = new Map<string, ContainerSeen>();
  for (const [container, entry] of Object.entries(record.containers)) {
    const seen = { ...(oldContainers.get(container) ?? { created: false, started: false, exited: false }) };
    const life = containerLifecycle(entry);
    if (!seen.created && (entry.status === 'created' || life.startedAt !== undefined || life.exit !== undefined)) {
      seen.created = true;
      up.push({ type: 'container', action: 'created', sandbox: id, container, time });
    }
    if (!seen.started && !seen.exited && life.startedAt !== undefined) {
      seen.started = true;
      up.push({ type: 'container', action: 'started', sandbox: id, container, time: life.startedAt });
    }
    if (!seen.exited && life.exit !== undefined) {
      seen.exited = true;
      const { at, ...exitStatus } = life.exit;
      up.push({ type: 'container', action: 'exited', sandbox: id, container, time: at, exitStatus });
    }
    containers.set(container, seen);
  }
  if (sameBoot) {
    for (const [container, seen] of oldContainers) {
      if (!containers.has(container) && seen.created) gone.push({ type: 'container', action: 'deleted', sandbox: id, container, time });
    }
  }
  const devices = devicesOf(record);
  for (const [key, device] of devices) if (!before?.devices.has(key)) up.push({ type: 'device', action: 'added', sandbox: id, time, device });
  for (const [key, device] of before?.devices ?? []) if (!devices.has(key)) gone.push({ type: 'device', action: 'removed', sandbox: id, time, device });
  // Into a VM state: the state first, then what it brought; out of one: what went, then the state.
  const stateFirst = VM_STATES.has(record.state);
  if (created) events.push(created);
  events.push(...ended);
  if (stateFirst) events.push(...changed, ...up, ...gone);
  else events.push(...up, ...gone, ...changed);
  return { events, after: { createdAt: record.createdAt, state: record.state, boot: record.boot?.id, containers, devices } };
}

/** One consumer's queue of an async iteration. */
class Queue {
  readonly items: WatchEvent[] = [];
  waiter: ((result: IteratorResult<WatchEvent>) => void) | undefined;
  dropped = 0;
  closed = false;

  push(event: WatchEvent): void {
    if (this.closed) return;
    if (this.waiter) {
      const waiter = this.waiter;
      this.waiter = undefined;
      waiter({ value: event, done: false });
      return;
    }
    if (this.items.length >= WATCH_QUEUE_LIMIT) {
      this.items.shift();
      this.dropped++;
    }
    this.items.push(event);
  }

  next(): Promise<IteratorResult<WatchEvent>> {
    if (this.dropped > 0) {
      const error = new WatchOverflowError(this.dropped);
      this.dropped = 0;
      return Promise.resolve({ value: { type: 'error', time: new Date().toISOString(), error }, done: false });
    }
    const item = this.items.shift();
    if (item) return Promise.resolve({ value: item, done: false });
    if (this.closed) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => (this.waiter = resolve));
  }

  close(): void {
    this.closed = true;
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.({ value: undefined, done: true });
  }
}

/** A sandbox the watcher attached to for `waitExits`: one per boot. */
interface ExitWait {
  boot: string;
  target: Promise<ExitWaitTarget | undefined>;
  abort: AbortController;
  waiting: Set<string>;
}

/**
 * Follows the sandboxes of a state directory (see the module's description for what it
 * guarantees). An async iterable of {@link WatchEvent}s (`for await (const event of watcher)`;
 * each iterator gets the events from its first call on, the first one from the watcher's start)
 * and an event emitter (`event`, and `sandbox`, `container`, `device`, `error`). It keeps the
 * process alive until {@link close} (or its `signal`, or `await using`); leaving the last
 * `for await` loop early (`break`, a throw) closes it too when it has no listeners.
 */
export class SandboxWatcher extends EventEmitter<SandboxWatcherEvents> implements AsyncIterable<WatchEvent>, AsyncDisposable {
  /** The state directory root it watches. */
  readonly root: string;
  /** Resolves once every existing record was read (changes after it are reported). */
  readonly ready: Promise<void>;
  readonly #store: StateStore<SandboxRecord>;
  readonly #rescanMs: number;
  readonly #since: number | undefined;
  readonly #attach: ((id: string) => Promise<ExitWaitTarget>) | undefined;
  readonly #snapshots = new Map<string, Snapshot>();
  /** The last error reported for a sandbox (reported again only when it changes). */
  readonly #errors = new Map<string, string>();
  readonly #busy = new Set<string>();
  readonly #again = new Set<string>();
  readonly #folderWatches = new Map<string, fs.FSWatcher>();
  readonly #exitWaits = new Map<string, ExitWait>();
  readonly #queues = new Set<Queue>();
  #firstQueue: Queue | undefined = new Queue();
  #rootWatch: fs.FSWatcher | undefined;
  /** `#rootWatch` watches the root for `sandboxes/` to be made. */
  #waitingForSandboxes = false;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  readonly #onAbort = (): void => this.close();
  readonly #signal: AbortSignal | undefined;

  /** @internal Made by `Sandbox.watch()`, which gives `attach` for `waitExits`. */
  constructor(options: WatchOptions = {}, attach?: (id: string) => Promise<ExitWaitTarget>) {
    super();
    this.root = stateRootOf(options);
    this.#store = storeAt(this.root);
    this.#rescanMs = validate.integer(options.rescanMs ?? 2000, 'rescanMs', 50, 60_000);
    this.#since = options.since === undefined ? undefined : parseSince(options.since);
    this.#attach = options.waitExits ? attach : undefined;
    if (options.waitExits && !attach) throw new InvalidArgumentError('waitExits', 'needs a way to attach to sandboxes: use Sandbox.watch()');
    this.#queues.add(this.#firstQueue!);
    this.#signal = options.signal;
    if (this.#signal?.aborted) {
      this.ready = Promise.resolve();
      this.close();
      return;
    }
    this.#signal?.addEventListener('abort', this.#onAbort, { once: true });
    this.#timer = setInterval(() => void this.#rescan(), this.#rescanMs);
    // Started once `ready` exists: what #start schedules waits for it.
    this.ready = Promise.resolve().then(() => this.#start());
  }

  /** True once closed. */
  get closed(): boolean {
    return this.#closed;
  }

  async #start(): Promise<void> {
    this.#watchRoot();
    const ids = await this.#ids();
    for (const id of ids) {
      if (this.#closed) return;
      this.#watchFolder(id);
      const record = await this.#read(id);
      if (!record) continue; // no record (yet), or unreadable (said): a later read takes it
      try {
        const { events, after } = diffRecord(id, undefined, record, new Date().toISOString());
        this.#snapshots.set(id, after!);
        // Without `since`, what exists is the starting point; with it, a replay of what the record shows.
        if (this.#since !== undefined) for (const event of events) if (Date.parse(event.time) >= this.#since) this.#emit(event);
      } catch (error) {
        this.#error(id, error);
        continue;
      }
      this.#followExits(id);
    }
  }

  /** Sandbox ids under the root; an unreadable `sandboxes/` is an error event (and none). */
  async #ids(): Promise<string[]> {
    try {
      return await this.#store.ids();
    } catch (error) {
      this.#error(undefined, error);
      return [];
    }
  }

  /** The record of `id`; undefined when it has none (or an error event when it is unreadable: the caller keeps its snapshot). */
  async #read(id: string): Promise<SandboxRecord | undefined | null> {
    try {
      const record = await this.#store.read(id);
      this.#errors.delete(id);
      return record;
    } catch (error) {
      if (error instanceof NotFoundError) {
        this.#errors.delete(id);
        return undefined;
      }
      this.#error(id, error);
      return null;
    }
  }

  #error(id: string | undefined, error: unknown): void {
    const err = error instanceof Error ? error : new Error(String(error));
    const key = id ?? '';
    if (this.#errors.get(key) === err.message) return; // the same problem seen again: said once
    this.#errors.set(key, err.message);
    this.#emit({ type: 'error', ...(id === undefined ? {} : { sandbox: id }), time: new Date().toISOString(), error: err });
  }

  #emit(event: WatchEvent): void {
    if (this.#closed) return;
    for (const queue of this.#queues) queue.push(event);
    this.emit('event', event);
    // Each type under its own name too (the union narrowed by hand: TypeScript cannot pair them).
    (this.emit as (name: string, e: WatchEvent) => boolean)(event.type, event);
  }

  /**
   * inotify on `sandboxes/`; while it does not exist, on the root (or nothing, while the root
   * does not exist either: the rescan tries again), to see it made.
   */
  #watchRoot(): void {
    if (this.#closed || (this.#rootWatch && !this.#waitingForSandboxes)) return;
    const onError = (watcher: fs.FSWatcher) => (): void => {
      watcher.close();
      if (this.#rootWatch === watcher) this.#rootWatch = undefined;
    };
    try {
      const watcher = fs.watch(path.join(this.root, 'sandboxes'), { persistent: false }, (_event, name) => {
        if (typeof name === 'string' && this.#validId(name)) {
          this.#watchFolder(name);
          this.#schedule(name);
        }
      });
      watcher.on('error', onError(watcher));
      this.#rootWatch?.close();
      this.#rootWatch = watcher;
      if (this.#waitingForSandboxes) {
        this.#waitingForSandboxes = false;
        void this.#rescan(); // what was made before this watch
      }
      return;
    } catch {
      // not there yet
    }
    if (this.#rootWatch) return;
    try {
      const watcher = fs.watch(this.root, { persistent: false }, (_event, name) => {
        if (name === 'sandboxes') this.#watchRoot();
      });
      watcher.on('error', onError(watcher));
      this.#rootWatch = watcher;
      this.#waitingForSandboxes = true;
      this.#watchRoot(); // made in between
    } catch {
      // no root yet either
    }
  }

  /** inotify on a sandbox's folder: state.json renamed over, the folder removed. */
  #watchFolder(id: string): void {
    if (this.#folderWatches.has(id) || this.#closed) return;
    try {
      const watcher = fs.watch(this.#store.dir(id), { persistent: false }, (_event, name) => {
        if (name === 'state.json' || name === null) this.#schedule(id);
      });
      watcher.on('error', () => {
        watcher.close();
        if (this.#folderWatches.get(id) === watcher) this.#folderWatches.delete(id);
        this.#schedule(id);
      });
      this.#folderWatches.set(id, watcher);
      this.#schedule(id); // a record written before the watch was set
    } catch {
      // gone already: the read says so
    }
  }

  #validId(name: string): boolean {
    try {
      validate.id(name);
      return true;
    } catch {
      return false;
    }
  }

  /** Reads `id` again soon; reads of one sandbox never overlap, and a change during one is read after it. */
  #schedule(id: string): void {
    if (this.#closed) return;
    if (this.#busy.has(id)) {
      this.#again.add(id);
      return;
    }
    this.#busy.add(id);
    void (async () => {
      try {
        do {
          this.#again.delete(id);
          await this.ready;
          await this.#refresh(id);
        } while (this.#again.has(id) && !this.#closed);
      } catch (error) {
        this.#error(id, error);
      } finally {
        this.#busy.delete(id);
      }
    })();
  }

  async #refresh(id: string): Promise<void> {
    const record = await this.#read(id);
    if (record === null || this.#closed) return; // unreadable: said, snapshot kept
    let diff: ReturnType<typeof diffRecord>;
    try {
      diff = diffRecord(id, this.#snapshots.get(id), record, new Date().toISOString());
    } catch (error) {
      this.#error(id, error); // a record that passed its check but holds something the diff cannot take
      return;
    }
    if (diff.after) this.#snapshots.set(id, diff.after);
    else {
      this.#snapshots.delete(id);
      // A folder without a record yet (a create under way) keeps its watch; a removed one's is dead.
      const folderGone = await fs.promises.stat(this.#store.dir(id)).then(() => false, () => true);
      const watch = this.#folderWatches.get(id);
      if (folderGone && watch) {
        watch.close();
        this.#folderWatches.delete(id);
      }
    }
    for (const event of diff.events) this.#emit(event);
    this.#followExits(id);
  }

  async #rescan(): Promise<void> {
    if (this.#closed) return;
    await this.ready;
    this.#watchRoot();
    const ids = new Set([...(await this.#ids()), ...this.#snapshots.keys()]);
    for (const id of ids) {
      this.#watchFolder(id);
      this.#schedule(id);
    }
  }

  /** With `waitExits`: waits for the started, not exited containers of running sandbox `id`, through one attachment per boot. */
  #followExits(id: string): void {
    if (!this.#attach) return;
    const snapshot = this.#snapshots.get(id);
    let wait = this.#exitWaits.get(id);
    if (wait && (snapshot?.state !== 'running' || snapshot.boot !== wait.boot)) {
      this.#endWait(id, wait);
      wait = undefined;
    }
    if (!snapshot || snapshot.state !== 'running' || snapshot.boot === undefined || this.#closed) return;
    const open = [...snapshot.containers].filter(([, seen]) => seen.started && !seen.exited).map(([c]) => c);
    if (open.length === 0) return;
    if (!wait) {
      const attach = this.#attach;
      const target = attach(id).catch((error: unknown) => {
        this.#error(id, error);
        return undefined;
      });
      wait = { boot: snapshot.boot, target, abort: new AbortController(), waiting: new Set() };
      this.#exitWaits.set(id, wait);
    }
    const current = wait;
    for (const container of open) {
      if (current.waiting.has(container)) continue;
      current.waiting.add(container);
      void (async () => {
        const target = await current.target;
        if (!target || current.abort.signal.aborted) return;
        const agent = await target.agent({ signal: current.abort.signal });
        const status = await agent.wait(container, { signal: current.abort.signal });
        target.containerExited(container, status); // records it; the record's change is the event
      })().catch(() => {
        // the VM stopped, the container was deleted, or the watcher closed: nothing to wait for
        current.waiting.delete(container);
      });
    }
  }

  #endWait(id: string, wait: ExitWait): void {
    this.#exitWaits.delete(id);
    wait.abort.abort();
    void wait.target.then((target) => target?.detach());
  }

  /** Stops watching: inotify, the rescan, the attachments of `waitExits`; iterators end. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#signal?.removeEventListener('abort', this.#onAbort);
    clearInterval(this.#timer);
    this.#rootWatch?.close();
    for (const watcher of this.#folderWatches.values()) watcher.close();
    this.#folderWatches.clear();
    for (const [id, wait] of this.#exitWaits) this.#endWait(id, wait);
    for (const queue of this.#queues) queue.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
    await this.ready.catch(() => undefined);
  }

  /** The events from now on (the first iterator: from the watcher's start); ends when the watcher closes. */
  [Symbol.asyncIterator](): AsyncIterator<WatchEvent> {
    let queue = this.#firstQueue;
    this.#firstQueue = undefined;
    if (!queue) {
      queue = new Queue();
      if (this.#closed) queue.close();
      else this.#queues.add(queue);
    }
    const q = queue;
    return {
      next: () => q.next(),
      return: () => {
        q.close();
        this.#queues.delete(q);
        // `break` out of the last loop, with no listener either: nothing can take events any more.
        if (this.#queues.size === 0 && this.#firstQueue === undefined && this.eventNames().length === 0) this.close();
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    } as AsyncIterator<WatchEvent> & AsyncIterable<WatchEvent>;
  }
}

/** Writes a container's start into its entry (a no-op once the entry is gone). @internal */
export async function recordContainerStarted(journal: Journal, id: string, at = new Date()): Promise<void> {
  await journal.transact((tx) => {
    const entry = tx.record.containers[id] as (ContainerLifecycle & object) | undefined;
    if (entry && entry.startedAt === undefined) entry.startedAt = at.toISOString();
  });
}

/** Writes a container's exit into its entry, once (a no-op once the entry is gone). @internal */
export async function recordContainerExit(journal: Journal, id: string, status: ExitStatus, at = new Date()): Promise<void> {
  const entry = (await journal.read()).containers[id] as ContainerLifecycle | undefined;
  if (!entry || entry.exit) return; // nothing to do: no lock taken
  await journal.transact((tx) => {
    const current = tx.record.containers[id] as ContainerLifecycle | undefined;
    if (current && current.exit === undefined) current.exit = { exitCode: status.exitCode, signal: status.signal, oomKilled: status.oomKilled, at: at.toISOString() };
  });
}
