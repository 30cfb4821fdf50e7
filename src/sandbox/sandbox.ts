/**
 * A sandbox: one lightweight VM that runs containers, driven through its guest agent.
 *
 * ```ts
 * await using sandbox = await Sandbox.create({ cpus: 1, memoryMiB: 256 });
 * await sandbox.start();
 * const container = await sandbox.createContainer({ process: { args: ['uname', '-r'] } });
 * container.stdout!.pipe(process.stdout);
 * await container.start();
 * console.log(await container.wait()); // { exitCode: 0, signal: 0, oomKilled: false }
 * ```
 *
 * The VM (QEMU) runs detached: it outlives the Node process that started it, and any process
 * can {@link Sandbox.attach} to it by id. Everything the sandbox makes on the host is written to
 * its record first, so {@link Sandbox.delete} can always finish, even after a crash; `stop` and
 * `delete` work from the record alone, whatever the guest and the hypervisor's control channel
 * do. Changes of the record are short transactions under the sandbox's lock; nothing waits for
 * the guest while holding it (see record.ts).
 *
 * @module
 */
import fs from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { EventEmitter } from 'eventemitter3';
import type { AgentClient } from '../agent/client.js';
import { AgentClosedError } from '../agent/errors.js';
import type { ContainerInfo, ExitStatus } from '../agent/messages.js';
import { runAll } from '../cleanup.js';
import { Container, Process } from '../container/container.js';
import { ContainerLogReader, logPaths, loggedContainers, type LogOptions } from '../container/log-file.js';
import { AbortError, InvalidArgumentError, NotFoundError, TimeoutError } from '../errors.js';
import type { Hypervisor, SpawnedVm, VirtualMachine, VmExit } from '../hypervisor/hypervisor.js';
import { QemuHypervisor } from '../hypervisor/qemu/hypervisor.js';
import { closeFds } from '../network/endpoints/index.js';
import type { CniCheckOutcome } from '../network/network.js';
import { loadNetworkConfig } from '../network/sandbox-config.js';
import { isAlive, logTail, spawnLogPipe, waitForProcessExit, type LogPipe, type ProcessIdentity } from '../host/process.js';
import type { PciPassthrough, VhostUserNic } from '../nfv/config.js';
import type { CallOptions } from '../options.js';
import { CorruptStateError, type StateStore } from '../state/store.js';
import { removeTree } from '../state/remove.js';
import * as validate from '../validate.js';
import { printable } from '../printable.js';
import { checkVolumeSpec, type VolumeSpec } from '../volume/spec.js';
import { bootDirOf, guestAssetsFor, killBoot, makeBootDir, sandboxFiles, SandboxError, vmConfigFor } from './boot.js';
import { resolveSandboxConfig, type ResolvedSandboxConfig, type SandboxConfig } from './config.js';
import { BootConnections } from './connections.js';
import { ContainerManager, type ContainerConfig, type GuestSession } from './containers.js';
import { Journal, RECORD_FORMAT, SupersededError, newBootId, newOwner, ownedHere, ownerAlive, type BootRecord, type SandboxRecord, type Transaction } from './record.js';
import { listSandboxes, removeUnreadable, stateRootOf, storeAt } from './registry.js';
import { ResourceManager, type ContextOptions } from './resources/manager.js';
import type { GuestContext, SandboxResource } from './resources/resource.js';
import { rootfsImageFormat } from './resources/guest-rootfs.js';
import { SHARED_FS_KIND } from './resources/share.js';
import {
  NETWORK_KIND,
  NetworkResource,
  addSandboxNetwork,
  checkSandboxNetwork,
  describeSandboxNetwork,
  removeSandboxNetwork,
  rescanSandboxNetwork,
  type AddNetworkOptions,
  type NetworkState,
  type RescanResult,
  type SandboxInterfaceInfo,
} from './resources/network.js';
import { VOLUMES_KIND, detachVolume, hotplugVolume, volumesState, type VolumesState } from './resources/volumes/index.js';
import { PCI_DEVICES_KIND, addPciDevice, pciDevices, unplugPci, type PciDeviceInfo, type PciDevicesState } from './resources/pci-devices.js';
import { VHOST_USER_KIND, addNic, unplugNic, vhostUserNics, type VhostUserNicInfo, type VhostUserState } from './resources/vhost-user.js';
import { STREAM_PORTS_KIND, parseStreamPorts, reopenPort } from './resources/stream-ports.js';
import { TRANSITIONAL_STATES, VM_STATES, assertTransition, stateError, type SandboxState } from './state-machine.js';
import { volumeInfo, type LookupOptions, type SandboxDevices, type SandboxEvents, type SandboxInfo, type StopInfo, type VolumeInfo } from './types.js';
import { SandboxWatcher, recordContainerExit, recordContainerStarted, type WatchOptions } from './watch.js';
import { inspectContainer, inspectContainerInfo, inspectRecord, type ContainerInspection, type SandboxInspection } from './inspect.js';
import { runContainer, runInNewSandbox, type RunEncoding, type RunOptions, type RunOutput, type RunResult, type RunSpec } from './run.js';

export type { SandboxConfig, SandboxState, ContainerConfig };
export type { LookupOptions, SandboxCallOptions, SandboxDevices, SandboxEvents, SandboxInfo, StopInfo, VolumeInfo } from './types.js';
export { SandboxError };

/** What {@link Sandbox.start}'s race against the VM's exit rejects with; made a SandboxError once the console's last lines are in. */
class VmExitedDuringStart extends Error {
  constructor(readonly exit: VmExit) {
    super(`the VM exited during start (${exit.detail})`);
  }
}

/** How long stop() waits for the agent to take the power-off request before it moves on. */
const AGENT_ANSWER_MS = 3_000;
/** How long a hypervisor control channel may take to answer before it counts as silent. */
const CONTROL_ANSWER_MS = 2_000;
/** How much of the console log a failed start() searches for the guest kernel's panic line. */
const PANIC_SEARCH_BYTES = 64 * 1024;
/**
 * The last `most` bytes of the console log from byte `offset` on (where a boot's output began),
 * made printable; from the start of the file when it was rotated since (it is shorter).
 */
async function consoleSince(file: string, offset: number, most: number): Promise<string> {
  const handle = await fs.open(file, 'r').catch(() => undefined);
  if (!handle) return '';
  try {
    const { size } = await handle.stat();
    const from = Math.max(size >= offset ? offset : 0, size - most);
    const { buffer, bytesRead } = await handle.read(Buffer.alloc(size - from), 0, size - from, from);
    return printable(buffer.subarray(0, bytesRead).toString('utf8'));
  } finally {
    await handle.close();
  }
}

/** How long start() waits for a VM whose agent connection broke to show its exit. */
const VM_EXIT_GRACE_MS = 1_000;

function checkedTimeout(value: number | undefined, fallback: number, field = 'timeoutMs'): number {
  return validate.integer(value ?? fallback, field, 0, 2 ** 31 - 1);
}

/**
 * A sandbox: one VM, its guest agent, and the host resources around it. Create one with
 * {@link Sandbox.create}, or take over an existing one with {@link Sandbox.attach}.
 *
 * Disposing (`await using`) a sandbox this process created stops and deletes it; disposing an
 * attached one only detaches.
 *
 * @example
 * ```ts
 * import { abortOnSignals, Sandbox } from 'vmpod';
 *
 * const signal = abortOnSignals();             // Ctrl-C: cancel, dispose, exit 130
 * await using sandbox = await Sandbox.create({ cpus: 1, memoryMiB: 256 }, { signal });
 * await sandbox.start({ signal });             // boots the VM; the agent answers
 * const { stdout } = await sandbox.run(['uname', '-r'], { signal });
 * console.log(`guest kernel ${stdout.trim()}`, await sandbox.inspect());
 * ```
 * More in examples/ (docs/examples.md).
 */
export class Sandbox extends EventEmitter<SandboxEvents> implements AsyncDisposable {
  // The ContainerHost of its containers (checked where it hands itself to them), but not in
  // `implements`: those members are @internal, and the typings leave them out (stripInternal).
  #record: SandboxRecord;
  readonly #journal: Journal;
  readonly #hypervisor: Hypervisor;
  readonly #owned: boolean;
  readonly #resources: ResourceManager;
  readonly #containers: ContainerManager;
  readonly #objects = new Map<string, Container>();
  readonly #connections: BootConnections;
  /** This object runs stop() or delete(): the VM's exit is theirs to record. */
  #ending = 0;
  /** Container exits being written to the record (containerExited): a container's entry is released after it. */
  readonly #exitRecords = new Map<string, Promise<unknown>>();

  private constructor(record: SandboxRecord, store: StateStore<SandboxRecord>, hypervisor: Hypervisor, owned: boolean) {
    super();
    this.#record = record;
    this.#journal = new Journal(store, record.id);
    this.#hypervisor = hypervisor;
    this.#owned = owned;
    this.#resources = new ResourceManager(this.#journal, store.dir(record.id), record.config);
    this.#containers = new ContainerManager({
      id: record.id,
      label: this.label,
      dir: store.dir(record.id),
      journal: this.#journal,
      resources: this.#resources,
      session: (options, action) => this.#session(options, action),
    });
    this.#connections = new BootConnections(record.id, hypervisor, record.config.agentPorts, {
      vmGone: (bootId, exit) => void this.#vmGone(bootId, exit).catch((error: unknown) => this.emit('error', error as Error)),
      error: (error, source) => {
        if (source === 'vm') return void this.emit('error', error);
        // An agent that breaks while this object stops or deletes the sandbox is expected, and so is
        // one whose VM died (told by 'stopped'): only a break while the VM lives on is an error.
        const vm = this.#record.boot?.vm;
        if (this.#ending > 0 || !vm) return;
        setTimeout(() => this.#ending === 0 && isAlive(vm) && this.emit('error', error), VM_EXIT_GRACE_MS).unref();
      },
      paused: () => this.emit('paused'),
      resumed: () => this.emit('resumed'),
    });
  }

  /**
   * Checks `config`, then records a new sandbox in state `created` (nothing runs yet: call
   * {@link start}). Bad input fails here, before anything is written.
   */
  static async create(config: SandboxConfig = {}, options: CallOptions = {}): Promise<Sandbox> {
    const resolved = resolveSandboxConfig(config);
    for (const field of ['kernel', 'initramfs'] as const) {
      const file = resolved.guest[field];
      if (file !== undefined && !(await fs.stat(file).catch(() => undefined))?.isFile()) {
        throw new InvalidArgumentError(`guest.${field}`, `${file} does not exist or is not a file`);
      }
    }
    if (resolved.guest.rootfsImage !== undefined) await rootfsImageFormat(resolved.guest.rootfsImage); // checked again at each start
    if (options.signal?.aborted) throw new AbortError('sandbox create', { cause: options.signal.reason });
    // CNI files read, plugins asked (VERSION): an unknown plugin fails here, before anything exists.
    if (resolved.network) await loadNetworkConfig(resolved.network, options.signal ? { signal: options.signal } : {});
    const store = storeAt(resolved.stateDir);
    await store.create(resolved.id, resolved.sharedFsUser ? { reachableBy: resolved.sharedFsUser } : {});
    const now = new Date().toISOString();
    const record: SandboxRecord = { format: RECORD_FORMAT, id: resolved.id, state: 'created', createdAt: now, updatedAt: now, config: resolved, resources: {}, containers: {} };
    try {
      await store.write(record);
    } catch (error) {
      await store.remove(resolved.id);
      throw error;
    }
    return new Sandbox(record, store, config.hypervisor ?? new QemuHypervisor(), true);
  }

  /**
   * Takes over sandbox `id` from another (or an earlier) process. Nothing is connected yet: the
   * agent and the hypervisor's control channel are reached when a call needs them. A sandbox
   * whose VM died meanwhile is recorded `stopped`.
   */
  static async attach(id: string, options: LookupOptions = {}): Promise<Sandbox> {
    const store = storeAt(stateRootOf(options));
    const record = await store.read(validate.id(id));
    const sandbox = new Sandbox(record, store, options.hypervisor ?? new QemuHypervisor(), false);
    if ((record.state === 'running' || record.state === 'paused') && record.boot) {
      if (!record.boot.vm || !isAlive(record.boot.vm)) await sandbox.#vmGone(record.boot.id, { reason: 'unexpected', detail: 'the VM was found gone' });
      else sandbox.#connections.watch(record.boot);
    }
    return sandbox;
  }

  /**
   * Deletes sandbox `id` (`vmpod delete`), also when its record cannot be read: then what can be
   * found without it is removed (its processes, its mounts, its folders), and the warnings it
   * resolves with say what could not be known.
   */
  static async remove(id: string, options: LookupOptions & { force?: boolean } = {}): Promise<string[]> {
    const store = storeAt(stateRootOf(options));
    try {
      const sandbox = await Sandbox.attach(id, options);
      await sandbox.delete(options);
      return [];
    } catch (error) {
      if (error instanceof NotFoundError && (await fs.stat(store.dir(validate.id(id))).catch(() => undefined))) {
        // A folder whose record was never written (a crash in create): nothing else was made yet.
        await store.remove(id);
        return [];
      }
      if (!(error instanceof CorruptStateError)) throw error;
      return removeUnreadable(store, validate.id(id), error);
    }
  }

  /** Every sandbox under the state directory, with its state checked against the live VM. */
  static async list(options: Omit<LookupOptions, 'signal' | 'hypervisor'> = {}): Promise<SandboxInfo[]> {
    return listSandboxes(storeAt(stateRootOf(options)));
  }

  /**
   * Follows every sandbox of the state directory, whichever process made it: its states, its
   * containers (created, started, exited with their status, deleted) and its devices, as typed
   * events read from the records (docs/events.md says what is guaranteed and what can be missed).
   *
   * ```ts
   * for await (const event of Sandbox.watch({ signal })) console.log(event.sandbox, event.type, event.type === 'error' ? event.error : event.action);
   * ```
   */
  static watch(options: WatchOptions = {}): SandboxWatcher {
    const watcher: SandboxWatcher = new SandboxWatcher(options, (id) => Sandbox.attach(id, { stateDir: watcher.root, ...(options.hypervisor ? { hypervisor: options.hypervisor } : {}) }));
    return watcher;
  }

  /** The sandbox id. */
  get id(): string {
    return this.#record.id;
  }

  /** The lifecycle state, as this object last saw it. */
  get state(): SandboxState {
    return this.#record.state;
  }

  /** The checked configuration. */
  get config(): Readonly<ResolvedSandboxConfig> {
    return this.#record.config;
  }

  /** The hypervisor's pid while the VM runs. */
  get pid(): number | undefined {
    return this.#record.boot?.vm?.pid;
  }

  /** The console log: guest kernel and agent output, hypervisor messages (capped; the previous part in `.1`). */
  get consoleLog(): string {
    return sandboxFiles(this.dir).consoleLog;
  }

  /** The state folder of this sandbox. */
  get dir(): string {
    return this.#journal.store.dir(this.id);
  }

  /** @internal `sandbox "ID"`. */
  get label(): string {
    return `sandbox "${this.id}"`;
  }

  /** @internal The record as on disk now. */
  async record(): Promise<SandboxRecord> {
    this.#record = await this.#journal.read();
    return this.#record;
  }

  // --- Lifecycle ---------------------------------------------------------------------------------

  /**
   * Boots the VM and connects to its agent (`created` or `stopped` -> `running`). Builds the
   * guest assets first if there are none (see the `progress` event). The host side is prepared
   * and the VM spawned under the sandbox lock (host work only; the VM's pid is recorded the moment
   * it exists); the wait for the VM and its agent runs without the lock, so `stop` and `delete`
   * from any process can end a boot that hangs. `timeoutMs` (default 120 s) bounds that wait, from
   * the spawn until the guest is set up ({@link TimeoutError}); a VM that exits meanwhile fails it
   * with a {@link SandboxError} carrying the console's tail. A failed start leaves it `stopped`.
   */
  async start(options: CallOptions = {}): Promise<void> {
    const { signal } = options;
    const bootTimeoutMs = checkedTimeout(options.timeoutMs, 120_000);
    await this.#recoverCrashedOperation();
    const current = await this.record();
    this.#checkStartable(current.state);
    const assets = await guestAssetsFor(this.id, current.config, (m) => this.emit('progress', m), signal);
    // Where this boot's console output begins (earlier boots' output is before it).
    const consoleStart = await fs.stat(this.consoleLog).then((s) => s.size, () => 0);
    const owner = newOwner();
    const bootId = newBootId();
    const boot = { id: bootId, dir: bootDirOf(this.#journal.store.root, bootId) };
    const guard = (r: SandboxRecord): void => {
      if (r.boot?.id !== bootId || r.op?.owner.token !== owner.token) throw new SupersededError(this.id, `was ${r.state === 'starting' ? 'restarted' : r.state} by another process while it was starting`);
    };
    const context: ContextOptions = { boot, guard, signal };
    let spawned: SpawnedVm | undefined;
    await this.#journal.transact(async (tx) => {
      const r = tx.record;
      this.#checkStartable(r.state);
      r.state = 'starting';
      r.op = { kind: 'start', owner, since: new Date().toISOString() };
      r.boot = { id: bootId, dir: boot.dir, startedAt: new Date().toISOString(), guest: { kernel: assets.kernel, initramfs: assets.initramfs } };
      if (assets.id !== undefined) r.boot.guest!.id = assets.id;
      if (assets.manifest) r.boot.guest!.kernelRelease = assets.manifest.kernelRelease;
      r.containers = {};
      delete r.stopReason;
      await tx.save();
      let log: LogPipe | undefined;
      let fds: number[] = [];
      try {
        await makeBootDir(boot, this.dir);
        const contributions = await this.#resources.prepare(r, context);
        fds = contributions.flatMap((c) => [...(c.fds ?? [])]);
        log = await spawnLogPipe(this.consoleLog);
        r.boot.logger = { pid: log.logger.pid, startTime: log.logger.startTime };
        await tx.save();
        spawned = await this.#hypervisor.spawn(vmConfigFor(r, boot, assets, contributions, this.dir, { fd: log.fd }), signal ? { signal } : {});
        r.boot.vm = spawned.handle;
      } catch (error) {
        await this.#endBootIn(tx, 'stop', context).catch((cleanup: unknown) => Object.assign(error as Error, { cleanupError: cleanup }));
        r.state = 'stopped';
        r.stopReason = { reason: 'unexpected', detail: `start failed: ${(error as Error).message}` };
        delete r.op;
        await tx.save();
        throw error;
      } finally {
        log?.close(); // the hypervisor has its own copy of the pipe, and of the NICs' queues
        closeFds(fds);
      }
    }, signal ? { signal } : {}).finally(async () => {
      this.#record = await this.#journal.read().catch(() => this.#record);
    });
    // The guest part is cut short when a daemon the boot needs dies (virtiofsd: the guest's mount
    // of the share would wait for it until the agent call's deadline), and at the boot's deadline.
    const died = new AbortController();
    const daemons = [(this.#record.resources[SHARED_FS_KIND] as { virtiofsd?: ProcessIdentity } | undefined)?.virtiofsd].filter((d) => d !== undefined);
    const watch = setInterval(() => {
      for (const d of daemons) if (!isAlive(d)) died.abort(new SandboxError(this.id, `virtiofsd (pid ${d.pid}) exited during start`));
    }, 200);
    const deadline = AbortSignal.timeout(bootTimeoutMs);
    const guestSignal = AbortSignal.any([died.signal, deadline, ...(signal ? [signal] : [])]);
    let vm: VirtualMachine | undefined;
    try {
      vm = await spawned!.ready({ signal: guestSignal });
      this.#connections.adopt(bootId, vm);
      const link = await this.#raceVmExit(vm, this.#connections.agent(this.#record.boot!, { signal: guestSignal, timeoutMs: bootTimeoutMs }));
      // Setting the clock needs no round trip of its own: it overlaps the resources' guest setup.
      const clockSet = link.agent.setTime(new Date(), { signal: guestSignal });
      clockSet.catch(() => undefined);
      await this.#resources.attach(this.#record, { ...context, signal: guestSignal }, { agent: link.agent, vm, guestStateDir: link.agent.info.stateDir });
      await clockSet;
      await this.#journal.transact((tx) => {
        guard(tx.record);
        tx.record.state = 'running';
        delete tx.record.op;
      });
    } catch (caught) {
      const error = await this.#whyStartFailed(caught, { owner, vm, cancelled: signal?.aborted === true, died: died.signal, deadline, bootTimeoutMs, consoleStart });
      if (error instanceof SandboxError && error.cause instanceof SupersededError) throw error;
      await this.#journal
        .transact(async (tx) => {
          if (tx.record.op?.owner.token !== owner.token) return; // another process ended it already
          try {
            await this.#endBootIn(tx, 'stop', { boot, signal: undefined });
          } finally {
            tx.record.state = 'stopped';
            tx.record.stopReason = { reason: 'unexpected', detail: `start failed: ${error.message}` };
            delete tx.record.op;
          }
        })
        .catch((cleanup: unknown) => Object.assign(error, { cleanupError: cleanup }));
      this.#connections.drop();
      throw error;
    } finally {
      clearInterval(watch);
      this.#record = await this.#journal.read().catch(() => this.#record);
    }
    this.emit('started');
  }

  #checkStartable(state: SandboxState): void {
    if (state === 'paused') throw stateError('sandbox', this.label, state, 'starting', { hint: 'start() boots a VM: resume() a paused one' });
    assertTransition('sandbox', this.label, state, 'starting', state === 'running' ? 'start() boots a VM that does not run' : undefined);
  }

  /**
   * The error a failed start() reports, by what ended it: another process (that stopped or
   * deleted the sandbox meanwhile), the caller's signal (an {@link AbortError} naming the start;
   * what was under way, e.g. the agent's handshake, stays in `cause`), a daemon of the boot that
   * died, the boot's deadline, or a guest that died: its VM exited, or its agent's connection
   * broke. Either of those two may be heard of first (a dying QEMU's chardev sockets close before
   * its exit is known), so both give a {@link SandboxError} with the console's tail, read once
   * the VM's log writer has copied what the VM left in its pipe (the panic's last lines).
   */
  async #whyStartFailed(
    caught: unknown,
    how: { owner: { token: string }; vm: VirtualMachine | undefined; cancelled: boolean; died: AbortSignal; deadline: AbortSignal; bootTimeoutMs: number; consoleStart: number },
  ): Promise<Error> {
    let exited = caught instanceof VmExitedDuringStart ? caught.exit : undefined;
    const cause = (exited ? undefined : caught) as Error | undefined;
    if (caught instanceof SupersededError) return new SandboxError(this.id, caught.message, { cause: caught });
    const record = await this.#journal.read().catch(() => undefined);
    if (!record || record.op?.owner.token !== how.owner.token) {
      const what = record ? (record.state === 'starting' ? 'restarted' : record.state) : 'deleted';
      return new SandboxError(this.id, `was ${what} by another process while it was starting`, { cause: new SupersededError(this.id, cause?.message ?? 'the VM exited') });
    }
    if (how.cancelled) return new AbortError(`${this.label}: start`, { cause });
    if (how.died.aborted) {
      // virtiofsd exits when QEMU goes: a VM that ended (a guest that panicked) explains both.
      exited ??= await how.vm?.waitForExit(AbortSignal.timeout(VM_EXIT_GRACE_MS)).catch(() => undefined);
      if (!exited) return how.died.reason as Error;
    } else if (how.deadline.aborted) return new TimeoutError(`${this.label}: start (the VM and its agent)`, how.bootTimeoutMs, { cause });
    // Without a control channel, ready() failed: its error says how the VM ended.
    const exit = exited ?? (await how.vm?.waitForExit(AbortSignal.timeout(VM_EXIT_GRACE_MS)).catch(() => undefined));
    if (!exit && !(cause instanceof AgentClosedError)) return cause!;
    const logger = record.boot?.logger;
    if (exit && logger) await waitForProcessExit(logger, VM_EXIT_GRACE_MS).catch(() => false);
    const tail = logTail(this.consoleLog);
    // The panic's own line (its backtrace alone can fill the tail), of this boot only.
    const panic = [...(await consoleSince(this.consoleLog, how.consoleStart, PANIC_SEARCH_BYTES)).matchAll(/Kernel panic - not syncing: ([^\n]*)/gu)].at(-1)?.[1]?.trim();
    const what = exit ? `the VM exited during start (${exit.detail})` : `the guest's agent hung up during start (${cause!.message})`;
    return new SandboxError(this.id, `${what}${panic ? `: the guest kernel panicked: ${panic}` : ''}; console:\n${tail}`, cause === undefined ? {} : { cause });
  }

  /** Rejects when `vm` exits first: a guest that dies during boot must not leave us waiting. */
  #raceVmExit<T>(vm: VirtualMachine, work: Promise<T>): Promise<T> {
    const abort = new AbortController();
    const exited = vm.waitForExit(abort.signal).then(
      (exit) => {
        throw new VmExitedDuringStart(exit);
      },
      () => new Promise<never>(() => undefined),
    );
    work.catch(() => undefined);
    return Promise.race([work, exited]).finally(() => abort.abort());
  }

  /**
   * Stops the VM (`running`/`paused`/`starting` -> `stopped`): the agent stops every container and
   * powers the guest off; after `timeoutMs` (default 10 s; 0: at once) the hypervisor is told to
   * quit, then killed. A silent agent or control channel is given a few seconds, never more: the
   * VM is killed through the pid the record holds, so stop always finishes. A sandbox that is
   * already `stopped` (its VM died, another process stopped it), or was never started
   * (`created`), is left as it is: stop is idempotent.
   */
  async stop(options: CallOptions = {}): Promise<void> {
    const timeoutMs = checkedTimeout(options.timeoutMs, 10_000);
    await this.#recoverCrashedOperation();
    let record = await this.record();
    // Another process is stopping it: let it finish (up to our own deadline), then take over.
    if (record.state === 'stopping' && ownerAlive(record.op?.owner) && !ownedHere(record.op?.owner)) {
      record = await this.#waitWhile('stopping', timeoutMs + 15_000, options.signal);
      if (record.state === 'stopped' && record.stopReason) return void this.emit('stopped', record.stopReason);
    }
    const owner = newOwner();
    this.#ending++;
    let info: StopInfo | undefined;
    try {
      const boot = await this.#journal.transact((tx) => {
        const r = tx.record;
        if (r.state === 'stopped' || r.state === 'created') return null; // never started, or its VM died, or another process stopped it, meanwhile
        if (r.state !== 'stopping' && r.state !== 'starting') assertTransition('sandbox', this.label, r.state, 'stopping');
        r.state = 'stopping';
        r.op = { kind: 'stop', owner, since: new Date().toISOString() };
        return r.boot;
      }, options.signal ? { signal: options.signal } : {});
      if (boot === null) return;
      const detail = boot?.vm && isAlive(boot.vm) ? await this.#shutdownVm(boot, timeoutMs, options.signal) : 'stop: the VM was already gone';
      await this.#journal.transact(async (tx) => {
        if (tx.record.op?.owner.token !== owner.token) return; // another stop or delete finished it
        let failure: unknown;
        await this.#endBootIn(tx, 'stop', { boot: boot && { id: boot.id, dir: boot.dir } }).catch((error: unknown) => (failure = error));
        tx.record.state = 'stopped';
        tx.record.stopReason = info = { reason: 'requested', detail };
        delete tx.record.op;
        if (failure !== undefined) {
          await tx.save();
          throw failure;
        }
      });
    } finally {
      this.#ending--;
      this.#connections.drop();
      this.#record = await this.#journal.read().catch(() => this.#record);
    }
    if (info) this.emit('stopped', info);
  }

  /** Waits while another live process holds the sandbox in `state`; returns the record after. */
  async #waitWhile(state: SandboxState, timeoutMs: number, signal: AbortSignal | undefined): Promise<SandboxRecord> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const record = await this.record();
      if (record.state !== state || !ownerAlive(record.op?.owner) || Date.now() > deadline) return record;
      if (signal?.aborted) throw new AbortError(`waiting for another process to leave "${state}"`, { cause: signal.reason });
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /**
   * The graceful part of a stop, without the lock: the agent is asked to power the guest off (a
   * silent one gets {@link AGENT_ANSWER_MS}), the VM is given `timeoutMs` to go; then the
   * hypervisor is told to quit (a silent control channel gets {@link CONTROL_ANSWER_MS}); what is
   * left is killed afterwards, from the record. Returns how the VM ended.
   */
  async #shutdownVm(boot: BootRecord, timeoutMs: number, signal: AbortSignal | undefined): Promise<string> {
    const vmIdentity = boot.vm!;
    if (timeoutMs > 0) {
      try {
        const answer = Math.min(AGENT_ANSWER_MS, timeoutMs);
        const { agent } = await this.#connections.agent(boot, { signal, timeoutMs: answer });
        await agent.shutdown({ timeoutMs: answer, ...(signal ? { signal } : {}) });
        if (await waitForProcessExit(vmIdentity, timeoutMs, signal)) return 'stop';
      } catch {
        // a silent or broken agent: on to the hypervisor
      }
      try {
        const vm = await this.#connections.vmControl(boot, { timeoutMs: CONTROL_ANSWER_MS });
        const { method } = await vm.shutdown({ graceful: () => Promise.reject(new Error('skipped')), gracefulTimeoutMs: 0 });
        if (method === 'quit') return 'stop: the guest did not power off in time, the hypervisor was told to quit';
      } catch {
        // a silent control channel: the VM is killed below
      }
    }
    return 'stop: the guest did not power off in time, the hypervisor was killed';
  }

  /**
   * Removes the sandbox and everything it made on the host (`created`/`stopped` -> `deleted`).
   * A running sandbox needs `force` (it is stopped first, with `timeoutMs`, default 3 s). Safe to
   * call again after a crash.
   */
  async delete(options: CallOptions & { force?: boolean } = {}): Promise<void> {
    if (this.#record.state === 'deleted') return;
    await this.#recoverCrashedOperation().catch((error: unknown) => {
      if (!(error instanceof NotFoundError)) throw error;
    });
    let record: SandboxRecord;
    try {
      record = await this.record();
    } catch (error) {
      if (error instanceof NotFoundError) return void (this.#record.state = 'deleted');
      throw error;
    }
    if (VM_STATES.has(record.state) || (record.state === 'deleting' && !ownerAlive(record.op?.owner))) {
      if (VM_STATES.has(record.state)) {
        if (!options.force) assertTransition('sandbox', this.label, record.state, 'deleting', 'stop it first, or delete with force');
        await this.stop({ timeoutMs: checkedTimeout(options.timeoutMs, 3_000), ...(options.signal ? { signal: options.signal } : {}) });
      }
    }
    const owner = newOwner();
    this.#ending++;
    try {
      await this.#journal.transact(async (tx) => {
        const r = tx.record;
        if (r.state === 'deleting' && ownerAlive(r.op?.owner) && !ownedHere(r.op?.owner)) {
          throw stateError('sandbox', this.label, r.state, 'deleting', { hint: `process ${r.op!.owner.pid} is deleting it` });
        }
        if (r.state !== 'deleting') assertTransition('sandbox', this.label, r.state, 'deleting');
        r.state = 'deleting';
        r.op = { kind: 'delete', owner, since: new Date().toISOString() };
        await tx.save();
        const context: ContextOptions = { boot: r.boot && { id: r.boot.id, dir: r.boot.dir } };
        await runAll(
          [
            ['the last boot', () => this.#endBootIn(tx, 'stop', context)],
            ['resources', () => this.#resources.release('delete', r, context)],
          ],
          `${this.label}: could not delete everything`,
        );
        tx.drop();
        await this.#journal.store.remove(this.id);
      }, options.signal ? { signal: options.signal } : {});
    } catch (error) {
      if (error instanceof NotFoundError) return void (this.#record.state = 'deleted'); // another process deleted it
      throw error;
    } finally {
      this.#ending--;
      this.#connections.drop();
    }
    this.#record.state = 'deleted';
  }

  /** Freezes the VM's vCPUs (`running` -> `paused`); QMP `stop`. */
  async pause(options: CallOptions = {}): Promise<void> {
    const record = await this.record();
    assertTransition('sandbox', this.label, record.state, 'paused');
    const vm = await this.#connections.vmControl(record.boot!, options);
    await vm.pause(options);
    await this.#journal.transact((tx) => {
      if (tx.record.boot?.id === record.boot!.id && tx.record.state === 'running') tx.record.state = 'paused';
    });
    this.#record = await this.#journal.read();
  }

  /** Thaws the VM's vCPUs (`paused` -> `running`); QMP `cont`. */
  async resume(options: CallOptions = {}): Promise<void> {
    const record = await this.record();
    if (record.state !== 'paused') throw stateError('sandbox', this.label, record.state, 'paused', { action: 'resume()' });
    const vm = await this.#connections.vmControl(record.boot!, options);
    await vm.resume(options);
    await this.#journal.transact((tx) => {
      if (tx.record.boot?.id === record.boot!.id && tx.record.state === 'paused') tx.record.state = 'running';
    });
    this.#record = await this.#journal.read();
    // The guest clock stood still while paused: set it again.
    await this.#connections.currentAgent(record.boot!.id)?.setTime(new Date(), options).catch(() => undefined);
  }

  /**
   * Closes this process's connections (the agent's, the hypervisor's, the output streams of the
   * containers it holds); the sandbox and its containers keep running, and any process can attach.
   */
  detach(): void {
    for (const container of this.#objects.values()) {
      for (const stream of [container.stdin, container.stdout, container.stderr]) stream?.destroy();
    }
    this.#objects.clear();
    this.#connections.drop();
  }

  /** Deletes a sandbox this process created (stopping it first); detaches from an attached one. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#owned) await this.delete({ force: true });
    else this.detach();
  }

  /**
   * Finishes what a process that died in the middle of an operation left (state `starting`,
   * `stopping` with a dead owner): the VM and what it used are released, the state is `stopped`.
   * A `deleting` left so is finished by {@link delete}.
   */
  async #recoverCrashedOperation(): Promise<void> {
    const record = await this.record();
    if (!TRANSITIONAL_STATES.has(record.state) || record.state === 'deleting' || ownerAlive(record.op?.owner)) return;
    this.#ending++;
    try {
      await this.#journal.transact(async (tx) => {
        const r = tx.record;
        if (!TRANSITIONAL_STATES.has(r.state) || r.state === 'deleting' || ownerAlive(r.op?.owner)) return;
        const kind = r.op?.kind ?? 'start';
        let failure: unknown;
        await this.#endBootIn(tx, 'stop', { boot: r.boot && { id: r.boot.id, dir: r.boot.dir } }).catch((error: unknown) => (failure = error));
        r.state = 'stopped';
        r.stopReason = { reason: 'unexpected', detail: `the process that was ${kind === 'start' ? 'starting' : 'stopping'} it died` };
        delete r.op;
        if (failure !== undefined) {
          await tx.save();
          throw failure;
        }
      });
    } finally {
      this.#ending--;
    }
  }

  /**
   * Inside a transaction: ends the record's boot and releases what it used: the VM and its log
   * writer killed from the record (and any daemon of the boot that was spawned but not yet
   * recorded), the containers' host sides, each resource (`phase`), the boot's folder. Every step
   * is tried; the boot is forgotten once its VM is gone.
   */
  async #endBootIn(tx: Transaction, phase: 'stop' | 'delete', context: ContextOptions): Promise<void> {
    const r = tx.record;
    const boot = r.boot;
    let vmGone = !boot;
    const steps: [string, () => Promise<unknown>][] = [];
    if (boot) {
      steps.push([
        'the VM',
        async () => {
          await killBoot(boot, this.dir, this.#hypervisor);
          vmGone = true;
        },
      ]);
    }
    for (const id of Object.keys(r.containers)) steps.push([`container ${id}`, () => this.#containers.releaseHost(tx, id, context)]);
    if (phase === 'stop') steps.push(['resources', () => this.#resources.release('stop', r, context)]);
    if (boot) steps.push(['the boot folder', () => removeTree(boot.dir)]);
    try {
      await runAll(steps, `${this.label}: could not release everything of its VM`);
    } finally {
      if (vmGone) {
        delete r.boot;
        r.containers = {};
      }
      this.#objects.clear();
      await tx.save();
    }
  }

  // --- The VM's exit ------------------------------------------------------------------------------

  /**
   * The VM of boot `bootId` is gone: records it (releasing what it used) unless it was this
   * process's own stop, another boot, or an operation of another process that will (it is waited
   * for). Tells listeners why it stopped, also when another process stopped, restarted or deleted
   * the sandbox; an attached process then watches the new boot.
   */
  async #vmGone(bootId: string, exit: VmExit): Promise<void> {
    if (this.#ending > 0) return;
    let info: StopInfo | undefined;
    let next: BootRecord | undefined;
    try {
      for (let wait = 0; info === undefined && wait < 600; wait++) {
        const r = await this.record();
        if (r.boot?.id === bootId && TRANSITIONAL_STATES.has(r.state) && ownerAlive(r.op?.owner)) {
          await new Promise((resolve) => setTimeout(resolve, 100)); // another process is stopping or restarting it
          continue;
        }
        await this.#journal.transact(async (tx) => {
          const t = tx.record;
          if (t.boot?.id === bootId && (t.state === 'running' || t.state === 'paused')) {
            info = { reason: exit.reason === 'unexpected' ? 'unexpected' : 'guest', detail: exit.detail };
            let failure: unknown;
            await this.#endBootIn(tx, 'stop', { boot: { id: t.boot.id, dir: t.boot.dir } }).catch((error: unknown) => (failure = error));
            t.state = 'stopped';
            t.stopReason = info;
            if (failure !== undefined) {
              await tx.save();
              throw failure;
            }
          } else if (t.boot?.id !== bootId) {
            info = t.state === 'stopped' && t.stopReason ? t.stopReason : { reason: 'requested', detail: 'stopped by another process' };
            if (t.boot && (t.state === 'running' || t.state === 'paused')) next = t.boot;
          } else if (!ownerAlive(t.op?.owner)) {
            info = { reason: 'unexpected', detail: exit.detail }; // an operation that died: the next lifecycle call finishes it
          }
        });
      }
    } catch (error) {
      if (!(error instanceof NotFoundError)) throw error;
      info = { reason: 'requested', detail: 'deleted by another process' }; // its record is gone too
      this.#record.state = 'deleted';
    }
    this.#connections.drop(bootId);
    this.#record = await this.#journal.read().catch(() => this.#record);
    if (next) this.#connections.watch(next);
    if (info) this.emit('stopped', info);
  }

  // --- Connections to the guest --------------------------------------------------------------------

  /**
   * @internal The agent connection of this process (the sandbox must run; a paused one's agent
   * answers once it is resumed, or the call's deadline ends it).
   */
  async agent(options: CallOptions = {}): Promise<AgentClient> {
    return (await this.#session(options, 'talking to the guest', true)).agent;
  }

  /** @internal This process's agent connection to the current boot, if it has one now. */
  currentAgent(): AgentClient | undefined {
    return this.#connections.currentAgent(this.#record.boot?.id);
  }

  /** The running boot and this process's way to its guest; every record change it makes checks the boot is still running. */
  async #session(options: CallOptions = {}, action = 'talking to the guest', pausedToo = false): Promise<GuestSession> {
    const record = await this.record();
    if (!record.boot || (record.state !== 'running' && !(pausedToo && record.state === 'paused'))) {
      throw stateError('sandbox', this.label, record.state, 'running', { action });
    }
    const boot = record.boot;
    const link = await this.#connections.agent(boot, { signal: options.signal, timeoutMs: options.timeoutMs ?? 30_000 });
    this.#connections.watch(boot);
    const guard = (r: SandboxRecord): void => {
      if (r.boot?.id !== boot.id || (r.state !== 'running' && r.state !== 'paused')) throw new SupersededError(this.id, `is ${r.state} now: it was stopped or restarted meanwhile`);
    };
    return {
      agent: link.agent,
      guestStateDir: link.agent.info.stateDir,
      bootDir: boot.dir,
      contextOptions: { boot: { id: boot.id, dir: boot.dir }, guard, signal: options.signal },
      vm: () => this.#connections.vmControl(boot, options),
    };
  }

  /** Runs `fn` with a resource's guest context on the running sandbox (hotplug and friends). */
  async #withGuest<S, T>(kind: string, fn: (ctx: GuestContext<S>) => Promise<T>, options: CallOptions, action: string): Promise<T> {
    const session = await this.#session(options, action);
    const resource = (this.#resources.find<S>(kind) ?? (kind === NETWORK_KIND ? new NetworkResource() : undefined)) as SandboxResource<S> | undefined;
    if (!resource) throw new InvalidArgumentError(kind, `${this.label} has no ${kind}`);
    const vm = await session.vm();
    return fn(this.#resources.guestContext(resource, await this.#journal.read(), session.contextOptions, { agent: session.agent, vm, guestStateDir: session.guestStateDir }));
  }

  // --- Containers --------------------------------------------------------------------------------

  /**
   * Creates a container (`created`; call `start()`): from an OCI bundle on the host, from a
   * rootfs directory, or from the builtin busybox rootfs. Its stdio streams are open before it
   * starts, so no output is missed. Its id is reserved in the sandbox's record first: the same id
   * from another process is refused, and a create that fails undoes only what it made.
   */
  async createContainer(options: ContainerConfig = {}): Promise<Container> {
    const created = await this.#containers.create(options, this.config);
    if (options.bundle !== undefined) {
      // For containers() in any process (the agent knows only the spec it was given). A sandbox
      // stopped meanwhile has no entry to write it to: the container is gone with it.
      const bundle = options.bundle;
      await this.#journal.transact((tx) => void (tx.record.containers[created.id] && (tx.record.containers[created.id]!.bundle = bundle))).catch(() => undefined);
    }
    const container = new Container(this, created.id, 'created', new Process(this, created.id, undefined, created.pid, created.stdio));
    this.#objects.set(created.id, container);
    return container;
  }

  /** A container of this sandbox by id, whichever process created it. */
  async container(id: string, options: CallOptions = {}): Promise<Container> {
    validate.id(id);
    const known = this.#objects.get(id);
    if (known) return known;
    const info = (await (await this.agent(options)).listContainers(options)).find((c) => c.id === id);
    if (!info) throw new NotFoundError('container', id);
    const state = info.status === 'running' || info.status === 'paused' || info.status === 'stopped' ? info.status : 'created';
    const container = new Container(this, id, state, undefined);
    this.#objects.set(id, container);
    return container;
  }

  /**
   * Every container in the sandbox, as the agent reports them; `bundle` is the host path of the
   * OCI bundle a container was made from (`''` for a rootfs directory or the builtin rootfs).
   */
  async containers(options: CallOptions = {}): Promise<ContainerInfo[]> {
    const list = await (await this.agent(options)).listContainers(options);
    const entries = (await this.record()).containers;
    return list.map((c) => (c.bundle === '' && entries[c.id]?.bundle !== undefined ? { ...c, bundle: entries[c.id]!.bundle! } : c));
  }

  /**
   * The log of container `id` (docs/logs.md; see {@link Container.logs}), in any state of the
   * sandbox, also once the container is gone with its VM (a stopped sandbox keeps its containers'
   * logs until it is deleted). Bytes by default; with `objectMode` the lines as `LogLine`
   * objects, with their stream and time.
   */
  logs(id: string, options: LogOptions = {}, objectMode = false): ContainerLogReader {
    return new ContainerLogReader(logPaths(this.dir, validate.id(id)), options, objectMode);
  }

  /** The ids of the containers that have a log in this sandbox (also those gone with a stopped VM). */
  loggedContainers(): string[] {
    return loggedContainers(this.dir);
  }

  /** @internal */
  containerLogs(id: string, options: LogOptions = {}): ContainerLogReader {
    return this.logs(id, options);
  }

  /** @internal Releases the host side of container `id` (the agent deleted it). */
  async releaseContainer(id: string): Promise<void> {
    this.#objects.delete(id);
    await this.#exitRecords.get(id); // its exit is in the record before its entry leaves it (watchers report both)
    await this.#containers.release(id);
  }

  /**
   * @internal Connects again to the stream port of output `fd` of container `id`, as a reader that
   * joins the stream under way (its first reader went away; what was in flight to it is lost: see
   * docs/sandbox.md, "Output streams"). Fails while another process reads it.
   */
  async reopenOutput(id: string, fd: 'stdout' | 'stderr', options: CallOptions = {}): Promise<Readable> {
    const record = await this.record();
    if (record.state !== 'running' || !record.boot) throw stateError('sandbox', this.label, record.state, 'running', { action: 'reading a container output' });
    return reopenPort(parseStreamPorts(record.resources[STREAM_PORTS_KIND]), this.dir, record.boot.dir, validate.id(id, 'id'), fd, options.signal);
  }

  /** @internal */
  containerExited(id: string, status: ExitStatus): void {
    this.emit('containerExit', id, status);
    // Into the record too, for watchers in other processes (a sandbox deleted meanwhile has no record to write).
    const recording = recordContainerExit(this.#journal, id, status).catch((error: unknown) => error instanceof NotFoundError || this.emit('error', error as Error));
    this.#exitRecords.set(id, recording);
    void recording.then(() => this.#exitRecords.get(id) === recording && this.#exitRecords.delete(id));
  }

  /** @internal Records that container `id` started, for watchers in other processes; never throws. */
  async containerStarted(id: string): Promise<void> {
    await recordContainerStarted(this.#journal, id).catch((error: unknown) => error instanceof NotFoundError || this.emit('error', error as Error));
  }

  // --- Hotplug: one shape for networks, volumes, vhost-user NICs and PCI devices ----------------

  /**
   * Adds an interface to the running sandbox (q35): CNI ADD of a network, or an interface already
   * in its namespace, hot plugged as a NIC (QMP `getfd`, `netdev_add`, `device_add`) and
   * configured in the guest. See docs/sandbox-networking.md.
   */
  async addNetwork(network: Omit<AddNetworkOptions, 'signal'>, options: CallOptions = {}): Promise<SandboxInterfaceInfo> {
    return this.#withGuest(NETWORK_KIND, (ctx: GuestContext<NetworkState>) => addSandboxNetwork(ctx, { ...network, ...(options.signal ? { signal: options.signal } : {}) }), options, 'adding a network');
  }

  /** Removes an interface (by its name, or its CNI network's name) from the running sandbox; CNI DEL for a CNI one. */
  async removeNetwork(name: string, options: CallOptions = {}): Promise<void> {
    await this.#withGuest(NETWORK_KIND, (ctx: GuestContext<NetworkState>) => removeSandboxNetwork(ctx, name), options, 'removing a network');
  }

  /** CNI CHECK of the sandbox's CNI networks (or the one of `name`); a plugin's failure is in its outcome. */
  async checkNetwork(name?: string, options: CallOptions = {}): Promise<CniCheckOutcome[]> {
    return this.#withGuest(NETWORK_KIND, (ctx: GuestContext<NetworkState>) => checkSandboxNetwork(ctx, name), options, 'checking its networks');
  }

  /** Scans the sandbox's namespace again: plugs new interfaces, unplugs gone ones, mirrors changed addresses and routes. */
  async rescanNetwork(options: CallOptions = {}): Promise<RescanResult> {
    return this.#withGuest(NETWORK_KIND, (ctx: GuestContext<NetworkState>) => rescanSandboxNetwork(ctx), options, 'rescanning its network');
  }

  /** The interfaces of the sandbox's network, from its record (whatever its state). */
  async networks(): Promise<SandboxInterfaceInfo[]> {
    return describeSandboxNetwork((await this.record()).resources[NETWORK_KIND]);
  }

  /**
   * Adds a volume to the running sandbox (hot plug for a block volume: QMP `blockdev-add` +
   * `device_add`; a bind into the share for a directory; an agent mount for tmpfs and hugepages).
   * It is forgotten when the sandbox stops; give it in the sandbox config to have it at every start.
   */
  async addVolume(volume: VolumeSpec | { toJSON(): VolumeSpec }, options: CallOptions = {}): Promise<VolumeInfo> {
    const spec = checkVolumeSpec(volume, 'volume');
    return volumeInfo(await this.#withGuest(VOLUMES_KIND, (ctx: GuestContext<VolumesState>) => hotplugVolume(ctx, spec), options, 'adding a volume'));
  }

  /** Removes a volume from the running sandbox (no container may use it any more). */
  async removeVolume(name: string, options: CallOptions = {}): Promise<void> {
    await this.#withGuest(VOLUMES_KIND, (ctx: GuestContext<VolumesState>) => detachVolume(ctx, name), options, 'removing a volume');
  }

  /** The volumes of the sandbox, from its record. */
  async volumes(): Promise<VolumeInfo[]> {
    return volumesState((await this.record()).resources[VOLUMES_KIND]).volumes.filter((v) => v.pending === undefined).map(volumeInfo);
  }

  /**
   * Hot plugs a vhost-user NIC into the running q35 sandbox (its guest RAM must be shared).
   * QEMU equivalent: QMP `chardev-add`, `netdev_add vhost-user`, `device_add virtio-net-pci,vectors=0,bus=rpN`.
   */
  async addVhostUserNic(nic: VhostUserNic, options: CallOptions = {}): Promise<VhostUserNicInfo> {
    return this.#withGuest(VHOST_USER_KIND, (ctx: GuestContext<VhostUserState>) => addNic(ctx, nic), options, 'adding a vhost-user NIC');
  }

  /** Unplugs a vhost-user NIC (`device_del`, then its netdev and chardev). */
  async removeVhostUserNic(id: string, options: CallOptions = {}): Promise<void> {
    await this.#withGuest(VHOST_USER_KIND, (ctx: GuestContext<VhostUserState>) => unplugNic(ctx, validate.id(id, 'id')), options, 'removing a vhost-user NIC');
  }

  /**
   * Binds a host PCI device (with its IOMMU group) to vfio-pci and hot plugs it into the running
   * q35 sandbox (QMP `device_add vfio-pci,host=ADDR,bus=rpN`). On failure the drivers are restored.
   */
  async addPciDevice(device: PciPassthrough, options: CallOptions = {}): Promise<PciDeviceInfo> {
    return this.#withGuest(PCI_DEVICES_KIND, (ctx: GuestContext<PciDevicesState>) => addPciDevice(ctx, device), options, 'adding a PCI device');
  }

  /** Unplugs a passed-through device and puts its IOMMU group back on the original drivers. */
  async removePciDevice(id: string, options: CallOptions = {}): Promise<void> {
    await this.#withGuest(PCI_DEVICES_KIND, (ctx: GuestContext<PciDevicesState>) => unplugPci(ctx, validate.id(id, 'id')), options, 'removing a PCI device');
  }

  /** The vhost-user NICs and passed-through devices of the sandbox, from its record. */
  async devices(): Promise<SandboxDevices> {
    const record = await this.record();
    return { vhostUser: vhostUserNics(record.resources[VHOST_USER_KIND]), pci: pciDevices(record.resources[PCI_DEVICES_KIND]) };
  }

  // --- One-call runs, inspection -----------------------------------------------------------------

  /**
   * Runs a container to completion in a sandbox of its own, made for this call and deleted after
   * it whatever happens (`docker run --rm`, dockerode's `docker.run`). `spec` is the command on
   * the builtin busybox rootfs, or a container config (process fields may be at its top level);
   * the result has the exit status and the output (strings, or Buffers with `encoding: 'buffer'`;
   * at most `maxOutputBytes` each, default 1 MiB). `signal` and `timeoutMs` (boot included) kill
   * the container and delete the sandbox.
   *
   * @example
   * ```ts
   * const { stdout, exitCode } = await Sandbox.run({ memoryMiB: 256 }, ['uname', '-r']);
   * ```
   */
  static run<E extends RunEncoding = 'utf8'>(config: SandboxConfig, spec: RunSpec, options: RunOptions<E> = {}): Promise<RunResult<RunOutput<E>>> {
    return runInNewSandbox((call) => Sandbox.create(config, call), spec, options);
  }

  /**
   * Runs a container in this running sandbox to completion and deletes it: the exit status and
   * the output, as {@link Sandbox.run} (whose options it takes; `timeoutMs` bounds the run).
   *
   * @example
   * ```ts
   * const r = await sandbox.run({ args: ['sh', '-c', 'cat; echo done >&2'] }, { input: 'hello\n' });
   * // { exitCode: 0, signal: 0, oomKilled: false, stdout: 'hello\n', stderr: 'done\n', ... }
   * ```
   */
  run<E extends RunEncoding = 'utf8'>(spec: RunSpec, options: RunOptions<E> = {}): Promise<RunResult<RunOutput<E>>> {
    return runContainer(this, spec, options);
  }

  /**
   * What vmpod knows of the sandbox, as plain JSON: state, config, host resources and processes,
   * volumes, devices, networks and the guest's addresses from the record; while it runs, its
   * containers as the agent reports them (`docker inspect`).
   */
  async inspect(options: CallOptions = {}): Promise<SandboxInspection> {
    const record = await this.record();
    const inspection = inspectRecord(record, this.dir, this.consoleLog);
    if (record.state === 'running') inspection.containers = (await this.containers(options)).map((c) => inspectContainerInfo(this.id, c));
    return inspection;
  }

  /** @internal Container `id` as `container.inspect()` reports it. */
  async inspectContainer(id: string, options: CallOptions = {}): Promise<ContainerInspection> {
    return inspectContainer(this.id, await this.agent(options), validate.id(id), options);
  }
}

