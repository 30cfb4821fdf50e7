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
 * can {@link Sandbox.attach} to it by id. Everything the sandbox makes on the host is written
 * to its record first, so {@link Sandbox.delete} can always finish, even after a crash.
 *
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'eventemitter3';
import { AgentClient } from '../agent/client.js';
import type { ContainerInfo, ExitStatus } from '../agent/messages.js';
import { AbortError, AlreadyExistsError, InvalidArgumentError, InvalidStateError, NotFoundError, VmpodError } from '../errors.js';
import { buildGuestAssets, rebuildOptions } from '../guest/build.js';
import { resolveGuestAssets, type GuestAssets } from '../guest/assets.js';
import { sha256FileStamped } from '../guest/hash.js';
import { packageRoot } from '../native.js';
import type { Hypervisor, MemoryConfig, VirtualMachine, VmConfig, VmDevice, VmExit } from '../hypervisor/hypervisor.js';
import { QemuHypervisor } from '../hypervisor/qemu/hypervisor.js';
import { isAlive, logTail, signalProcess, waitForProcessExit } from '../hypervisor/process.js';
import { FileLock } from '../state/lock.js';
import { DEFAULT_STATE_DIR, StateStore } from '../state/store.js';
import { removeTree } from '../state/remove.js';
import { mount } from '../devices/mount.js';
import * as validate from '../validate.js';
import { Container, Process, normaliseStdio, type ContainerHost } from '../container/container.js';
import {
  adaptSpecForGuest,
  applyOverrides,
  checkOverrides,
  defaultSpec,
  readBundle,
  type OciSpec,
  type ProcessOverrides,
} from '../container/spec.js';
import { resolveSandboxConfig, type ResolvedSandboxConfig, type SandboxConfig } from './config.js';
import { RECORD_FORMAT, checkRecord, type SandboxRecord } from './record.js';
import { bindIntoSharedDir, releaseMounts } from './shared-dir.js';
import { guestRootfsImageDir, rootfsImageFormat } from './guest-rootfs.js';
import type { GuestContext, ResourceContext, SandboxResource, VmContribution } from './resource.js';
import { sandboxResources } from './resources.js';
import { createInit, releaseStreamPorts, stdioTransport, type InitStdioOptions } from './stream-ports.js';
import { guestSharedDir, sharedDirOf } from './shared-fs.js';
import { assertTransition, type SandboxState } from './state-machine.js';
import { blockRootfs, containerMounts, releaseContainerVolumes } from '../volume/container.js';
import { VOLUMES_KIND, volumesState } from '../volume/resource.js';
import { checkContainerVolumes, type ContainerVolume } from '../volume/spec.js';
import { loadNetworkConfig } from '../network/sandbox-config.js';
import type { CniCheckOutcome } from '../network/network.js';
import {
  NETWORK_KIND,
  addSandboxNetwork,
  checkSandboxNetwork,
  describeSandboxNetwork,
  removeSandboxNetwork,
  rescanSandboxNetwork,
  type AddNetworkOptions,
  type RescanResult,
  type SandboxInterfaceInfo,
} from '../network/sandbox-network.js';

export type { SandboxConfig, SandboxState };

/** Name prefix of the agent's virtio-serial ports (the agent looks for it). */
const AGENT_PORT_PREFIX = 'vmpod.agent.';

/** The VM or its agent failed to come up, or went away. */
export class SandboxError extends VmpodError {
  constructor(readonly sandboxId: string, message: string, options: { cause?: unknown } = {}) {
    super('ERR_VMPOD_SANDBOX', `sandbox "${sandboxId}": ${message}`, options);
  }
}

/** Why a sandbox stopped. */
export interface StopInfo {
  /** `requested`: stop() or delete(); `guest`: the guest powered off; `unexpected`: the VM died. */
  reason: 'requested' | 'unexpected' | 'guest';
  /**
   * e.g. `SIGKILL`, `guest-shutdown`; for stop(), `stop` when the guest powered off in time,
   * else a sentence saying the hypervisor was told to quit or killed.
   */
  detail: string;
}

/** Events of a {@link Sandbox}. */
export interface SandboxEvents {
  /** Progress of a long step (e.g. the first guest build). */
  progress: (message: string) => void;
  /** The VM runs and its agent answered. */
  started: () => void;
  paused: () => void;
  resumed: () => void;
  /**
   * The VM is gone, on request or not (a VM killed from outside gives `unexpected`), also when
   * another process stopped or deleted the sandbox (with the reason it recorded).
   */
  stopped: (info: StopInfo) => void;
  /** A container's init process exited. */
  containerExit: (containerId: string, status: ExitStatus) => void;
  /**
   * A background failure: recording that the VM died, the agent connection broken by the guest
   * (a protocol violation, a hang-up while the VM runs), the hypervisor's control channel lost.
   */
  error: (error: Error) => void;
}

/** Options of calls that can be cancelled. */
export interface SandboxCallOptions {
  signal?: AbortSignal;
}

/** Options of {@link Sandbox.attach} and {@link Sandbox.list}. */
export interface LookupOptions extends SandboxCallOptions {
  /** State directory root (default `/run/vmpod`, or `$VMPOD_STATE_DIR`). */
  stateDir?: string;
  /** The VM backend (default: QEMU). */
  hypervisor?: Hypervisor;
}

/** One line of {@link Sandbox.list}. */
export interface SandboxInfo {
  id: string;
  state: SandboxState;
  createdAt: string;
  /** The hypervisor's pid while the VM runs. */
  pid?: number;
  cpus: number;
  memoryMiB: number;
  machine: string;
  /** The console log (guest console and hypervisor messages). */
  consoleLog: string;
}

/** Where a container comes from: an OCI bundle, a rootfs directory, or the builtin busybox rootfs. */
export interface ContainerConfig extends SandboxCallOptions {
  /** Container id, unique in the sandbox (default random). */
  id?: string;
  /** Host path of an OCI bundle (config.json + rootfs), as for `runc run --bundle`. */
  bundle?: string;
  /**
   * Host path of a root filesystem directory, or `builtin` (the default without a bundle):
   * busybox, or the sandbox's `guest.rootfsImage` when it has one; copy-on-write either way.
   */
  rootfs?: string;
  /** Overrides of the bundle's process (or the process of a rootfs container: args default to `/bin/sh`). */
  process?: ProcessOverrides;
  /** Hostname (default: the container id, or the bundle's). */
  hostname?: string;
  /**
   * Which stdio streams of the init to open (default: stdout and stderr), and how its stdout
   * and stderr travel (`transport`: stream ports when free, or always the agent).
   */
  stdio?: InitStdioOptions;
  /** Volumes of the sandbox to mount in the container (see {@link Volume.at}). */
  volumes?: ContainerVolume[];
  /**
   * How the rootfs of a bundle or rootfs directory reaches the guest: `virtiofs` (default: a
   * bind mount into the shared directory) or `block` (an ext4 image made with `mkfs.ext4 -d`,
   * hot plugged as a virtio-blk disk; q35 only; writes stay in the image).
   */
  rootfsTransport?: 'virtiofs' | 'block';
}

/** What a guest context adds to a resource context. */
type GuestParts = Pick<GuestContext, 'agent' | 'vm' | 'guestStateDir'>;

/** Paths of a sandbox's folder in the state directory. */
function sandboxPaths(dir: string, ports: number) {
  return {
    dir,
    consoleLog: path.join(dir, 'console.log'),
    sharedDir: sharedDirOf(dir),
    agentSockets: Array.from({ length: ports }, (_, i) => path.join(dir, `agent-${i}.sock`)),
    agentLocks: Array.from({ length: ports }, (_, i) => path.join(dir, `agent-${i}.lock`)),
  };
}

function now(): string {
  return new Date().toISOString();
}

function raceAbort(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted) throw new AbortError(what, { cause: signal.reason });
}

/** Rejects when `vm` exits first: a guest that dies during boot must not leave us waiting. */
function unlessVmExits<T>(vm: VirtualMachine, work: Promise<T>, sandboxId: string, consoleLog: string): Promise<T> {
  const abort = new AbortController();
  const exited = vm.waitForExit(abort.signal).then(
    (exit) => {
      throw new SandboxError(sandboxId, `the VM exited during start (${exit.detail}); console:\n${logTail(consoleLog)}`);
    },
    () => new Promise<never>(() => undefined),
  );
  return Promise.race([work, exited]).finally(() => abort.abort());
}

/**
 * A sandbox: one VM, its guest agent, and the host resources around it. Create one with
 * {@link Sandbox.create}, or take over an existing one with {@link Sandbox.attach}.
 *
 * Disposing (`await using`) a sandbox this process created stops and deletes it; disposing an
 * attached one only detaches.
 */
export class Sandbox extends EventEmitter<SandboxEvents> implements AsyncDisposable, ContainerHost {
  #record: SandboxRecord;
  readonly #store: StateStore<SandboxRecord>;
  readonly #hypervisor: Hypervisor;
  readonly #owned: boolean;
  #vm: VirtualMachine | undefined;
  #agent: AgentClient | undefined;
  #agentLock: FileLock | undefined;
  #guestStateDir = '/run/vmpod';
  #stopping = false;
  readonly #containers = new Map<string, Container>();

  private constructor(record: SandboxRecord, store: StateStore<SandboxRecord>, hypervisor: Hypervisor, owned: boolean) {
    super();
    this.#record = record;
    this.#store = store;
    this.#hypervisor = hypervisor;
    this.#owned = owned;
  }

  /**
   * Checks `config`, then records a new sandbox in state `created` (nothing runs yet: call
   * {@link start}). Bad input fails here, before anything is written.
   */
  static async create(config: SandboxConfig = {}, options: SandboxCallOptions = {}): Promise<Sandbox> {
    const resolved = resolveSandboxConfig(config);
    for (const field of ['kernel', 'initramfs'] as const) {
      const file = resolved.guest[field];
      if (file !== undefined && !(await fs.stat(file).catch(() => undefined))?.isFile()) {
        throw new InvalidArgumentError(`guest.${field}`, `${file} does not exist or is not a file`);
      }
    }
    if (resolved.guest.rootfsImage !== undefined) await rootfsImageFormat(resolved.guest.rootfsImage); // checked again at each start
    raceAbort(options.signal, 'sandbox create');
    // CNI files read, plugins asked (VERSION): an unknown plugin fails here, before anything exists.
    if (resolved.network) await loadNetworkConfig(resolved.network, options.signal ? { signal: options.signal } : {});
    const store = newStore(resolved.stateDir);
    await store.create(resolved.id);
    const record: SandboxRecord = {
      format: RECORD_FORMAT,
      id: resolved.id,
      state: 'created',
      createdAt: now(),
      updatedAt: now(),
      config: resolved,
      resources: {},
      mounts: [],
    };
    try {
      await store.write(record);
    } catch (error) {
      await store.remove(resolved.id);
      throw error;
    }
    return new Sandbox(record, store, config.hypervisor ?? new QemuHypervisor(), true);
  }

  /**
   * Takes over sandbox `id` from another (or an earlier) process: its VM and a free agent
   * port. A sandbox whose VM died meanwhile is marked `stopped`.
   */
  static async attach(id: string, options: LookupOptions = {}): Promise<Sandbox> {
    const store = newStore(stateDirOf(options));
    const record = await store.read(validate.id(id));
    const sandbox = new Sandbox(record, store, options.hypervisor ?? new QemuHypervisor(), false);
    if (record.state === 'running' || record.state === 'paused') {
      // No VM handle while "running" means a release is under way (or crashed midway).
      if (!record.vm || !isAlive(record.vm)) {
        await sandbox.#recordVmGone({ reason: 'shutdown', detail: 'the VM was found gone' }, true);
      } else {
        const vm = await sandbox.#hypervisor.attach(record.vm, options.signal ? { signal: options.signal } : {});
        sandbox.#adoptVm(vm);
        try {
          await sandbox.#connectAgent(options.signal);
        } catch (error) {
          vm.detach();
          throw error;
        }
      }
    }
    return sandbox;
  }

  /** Every sandbox under the state directory, with its state checked against the live VM. */
  static async list(options: Omit<LookupOptions, 'signal' | 'hypervisor'> = {}): Promise<SandboxInfo[]> {
    const store = newStore(stateDirOf(options));
    const infos: SandboxInfo[] = [];
    for (const id of await store.ids()) {
      let record: SandboxRecord;
      try {
        record = await store.read(id);
      } catch {
        continue; // a folder whose record was never written: delete() can still remove it
      }
      let state = record.state;
      if ((state === 'running' || state === 'paused') && (!record.vm || !isAlive(record.vm))) state = 'stopped';
      const info: SandboxInfo = {
        id,
        state,
        createdAt: record.createdAt,
        cpus: record.config.cpus,
        memoryMiB: record.config.memoryMiB,
        machine: record.config.machine,
        consoleLog: sandboxPaths(store.dir(id), 0).consoleLog,
      };
      if (record.vm && state !== 'stopped') info.pid = record.vm.pid;
      infos.push(info);
    }
    return infos;
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
    return this.#record.vm?.pid;
  }

  /** The console log: guest kernel and agent output, hypervisor messages. */
  get consoleLog(): string {
    return this.#paths().consoleLog;
  }

  /** The state folder of this sandbox. */
  get dir(): string {
    return this.#store.dir(this.id);
  }

  /** @internal `sandbox "ID"`. */
  get label(): string {
    return `sandbox "${this.id}"`;
  }

  /** @internal The agent connection of this process (only while the sandbox runs). */
  get agent(): AgentClient {
    if (!this.#agent || this.#agent.closed) {
      throw new InvalidStateError(this.label, this.state, 'running', { action: 'talking to the agent' });
    }
    return this.#agent;
  }

  #paths() {
    return sandboxPaths(this.dir, this.#record.config.agentPorts);
  }

  /** Runs `fn` on the freshly read record under the sandbox lock, then persists it. */
  async #update<T>(fn: (record: SandboxRecord) => Promise<T> | T, signal?: AbortSignal): Promise<T> {
    const lock = await this.#store.lock(this.id, signal ? { signal } : {});
    try {
      const record = await this.#store.read(this.id);
      this.#record = record;
      try {
        return await fn(record);
      } finally {
        record.updatedAt = now();
        await this.#store.write(record);
      }
    } finally {
      await lock.release();
    }
  }

  /**
   * Boots the VM and connects to its agent (`created` or `stopped` -> `running`). Builds the
   * guest assets first if there are none (see the `progress` event).
   */
  async start(options: SandboxCallOptions = {}): Promise<void> {
    const { signal } = options;
    await this.#update(async (record) => {
      // Only a VM that does not run can be started (a paused one is resumed).
      if (record.state !== 'created' && record.state !== 'stopped') {
        throw new InvalidStateError(this.label, record.state, 'running', { hint: record.state === 'paused' ? 'start() boots a VM: resume() a paused one' : 'start() boots a VM that does not run' });
      }
      assertTransition('sandbox', this.label, record.state, 'running');
      const config = record.config;
      const paths = this.#paths();
      // The asset check runs while the resources are prepared: neither needs the other.
      const pendingAssets = this.#guestAssets(config, signal);
      pendingAssets.catch(() => undefined);
      for (const socket of paths.agentSockets) await fs.rm(socket, { force: true });
      const resources = sandboxResources(config);
      const prepared: SandboxResource[] = [];
      try {
        const contributions: VmContribution[] = [];
        for (const resource of resources) {
          prepared.push(resource);
          contributions.push(await resource.prepare(this.#resourceContext(record, resource, signal)));
        }
        const assets = await pendingAssets;
        record.guest = { kernel: assets.kernel, initramfs: assets.initramfs };
        if (assets.id !== undefined) record.guest.id = assets.id;
        if (assets.manifest) record.guest.kernelRelease = assets.manifest.kernelRelease;
        const vm = await this.#hypervisor.start(this.#vmConfig(record, assets, contributions), signal ? { signal } : {});
        record.vm = vm.handle;
        record.state = 'running';
        delete record.stopReason;
        await this.#store.write(record);
        this.#adoptVm(vm);
        await unlessVmExits(vm, this.#connectAgent(signal, 120_000), this.id, paths.consoleLog);
        // Setting the clock needs no round trip of its own: it overlaps the resources' guest setup.
        const clockSet = this.agent.setTime(new Date(), signal ? { signal } : {});
        clockSet.catch(() => undefined);
        for (const resource of resources) await resource.attach?.(this.#guestContext(record, resource, signal));
        await clockSet;
      } catch (error) {
        if (record.state === 'running') {
          record.state = 'stopped';
          record.stopReason = { reason: 'unexpected', detail: `start failed: ${(error as Error).message}` };
        }
        await this.#releaseVm(record, prepared).catch(() => undefined);
        throw error;
      }
    }, signal);
    this.emit('started');
  }

  /** The VM configuration: the agent's ports plus what each resource contributed. */
  #vmConfig(record: SandboxRecord, assets: GuestAssets, contributions: readonly VmContribution[]): VmConfig {
    const config = record.config;
    const paths = this.#paths();
    const devices: VmDevice[] = [
      {
        kind: 'virtio-serial',
        id: 'agent',
        ports: paths.agentSockets.map((socket, i) => ({ name: `${AGENT_PORT_PREFIX}${i}`, socket })),
      },
    ];
    devices.push(...config.extraDevices);
    const kernelArgs = [...config.guest.kernelArgs];
    if (config.debug) kernelArgs.push('vmpod.debug=1');
    let backend: MemoryConfig['backend'];
    for (const c of contributions) {
      devices.push(...(c.devices ?? []));
      kernelArgs.push(...(c.kernelArgs ?? []));
      if (c.memoryBackend) {
        if (backend) throw new InvalidArgumentError('memory', 'two resources ask for a memory backend');
        backend = c.memoryBackend;
      }
    }
    const shared = contributions.some((c) => c.sharedMemory);
    const memory: MemoryConfig = {
      sizeMiB: config.memoryMiB,
      backend: backend ?? (shared ? { kind: 'memfd' } : { kind: 'anonymous' }),
      ...(shared || backend ? { shared: true } : {}),
      ...(contributions.some((c) => c.prealloc) ? { prealloc: true } : {}),
      merge: config.ksm === true,
    };
    return {
      id: config.id,
      machine: config.machine,
      cpus: config.cpus,
      memory,
      kernel: assets.kernel,
      initramfs: assets.initramfs,
      kernelArgs,
      devices,
      consoleLog: paths.consoleLog,
      runDir: paths.dir,
    };
  }

  /** The context a resource's hooks get: its own slice of the record, saved atomically. */
  #resourceContext(record: SandboxRecord, resource: SandboxResource, signal?: AbortSignal): ResourceContext;
  #resourceContext(record: SandboxRecord, resource: SandboxResource, signal: AbortSignal | undefined, guest: GuestParts): GuestContext;
  #resourceContext(record: SandboxRecord, resource: SandboxResource, signal?: AbortSignal, guest?: GuestParts): ResourceContext {
    const store = this.#store;
    return {
      sandboxId: record.id,
      dir: this.dir,
      config: record.config,
      get state() {
        return record.resources[resource.kind];
      },
      async save(state: unknown) {
        record.resources[resource.kind] = state;
        record.updatedAt = now();
        await store.write(record);
      },
      ...(signal ? { signal } : {}),
      ...guest,
    };
  }

  #guestContext(record: SandboxRecord, resource: SandboxResource, signal?: AbortSignal): GuestContext {
    return this.#resourceContext(record, resource, signal, {
      agent: this.agent,
      vm: this.#requireVm(),
      guestStateDir: this.#guestStateDir,
    });
  }

  /**
   * @internal Runs `fn` with a resource's guest context under the sandbox lock (for hotplug:
   * adding a network or a volume to a running sandbox). The record is persisted afterwards.
   */
  async withResource<T>(kind: string, fn: (ctx: GuestContext) => Promise<T>, signal?: AbortSignal): Promise<T> {
    return this.#update(async (record) => {
      if (record.state !== 'running') throw new InvalidStateError(this.label, record.state, 'running', { action: 'changing devices' });
      const resource = sandboxResources(record.config).find((r) => r.kind === kind) ?? { kind, prepare: async () => ({}), release: async () => undefined };
      return fn(this.#guestContext(record, resource, signal));
    }, signal);
  }

  async #guestAssets(config: ResolvedSandboxConfig, signal: AbortSignal | undefined): Promise<GuestAssets> {
    const overrides = {
      cacheDir: config.guest.cacheDir,
      verify: 'size' as const,
      ...(config.guest.kernel === undefined ? {} : { kernel: config.guest.kernel }),
      ...(config.guest.initramfs === undefined ? {} : { initramfs: config.guest.initramfs }),
    };
    if (config.guest.kernel !== undefined && config.guest.initramfs !== undefined) return resolveGuestAssets(overrides);
    let assets: GuestAssets | undefined;
    let previous: GuestAssets['manifest'];
    try {
      assets = await resolveGuestAssets(overrides);
      previous = assets.manifest;
      // The assets carry the agent: when this package's agent was rebuilt, so must they be.
      const agent = path.join(packageRoot, 'build', 'Release', 'vmpod-agent');
      const agentSha = await sha256FileStamped(agent, path.join(config.guest.cacheDir, 'agent.stamp')).catch(() => undefined);
      if (agentSha !== undefined && assets.manifest && agentSha !== assets.manifest.inputs.agentSha256) assets = undefined;
    } catch (error) {
      if (config.guest.build === 'never') throw error;
    }
    if (assets) return assets;
    if (config.guest.build === 'never') {
      throw new SandboxError(this.id, 'the guest assets are older than the agent; run "vmpod guest build"');
    }
    this.emit('progress', 'building the guest assets (kernel, initramfs, agent): this happens once');
    await buildGuestAssets({
      ...(previous ? rebuildOptions(previous) : {}), // the same kernel, modules and features as before
      cacheDir: config.guest.cacheDir,
      onProgress: (p) => this.emit('progress', p.message),
      ...(signal ? { signal } : {}),
    });
    return resolveGuestAssets(overrides);
  }

  #guestShared(): string {
    return guestSharedDir(this.#guestStateDir);
  }

  #adoptVm(vm: VirtualMachine): void {
    this.#vm = vm;
    vm.on('paused', () => this.emit('paused'));
    vm.on('resumed', () => this.emit('resumed'));
    vm.on('exit', (exit) => {
      if (this.#stopping) return;
      this.#recordVmGone(exit, false).catch((error: unknown) => this.emit('error', error as Error));
    });
    // QMP broke while QEMU lives on: calls that need it will fail; say so now.
    vm.on('error', (error) => this.emit('error', error));
  }

  /** Connects to the first agent port no other process holds. */
  async #connectAgent(signal: AbortSignal | undefined, timeoutMs = 30_000): Promise<void> {
    const paths = this.#paths();
    for (let i = 0; i < paths.agentSockets.length; i++) {
      let lock: FileLock;
      try {
        lock = await FileLock.acquire(paths.agentLocks[i]!, { timeoutMs: 0 });
      } catch {
        continue;
      }
      try {
        const agent = await AgentClient.connectUnix(paths.agentSockets[i]!, {
          timeoutMs,
          clientName: `vmpod-node/${process.pid}`,
          ...(signal ? { signal } : {}),
        });
        this.#agent = agent;
        this.#agentLock = lock;
        this.#guestStateDir = agent.info.stateDir;
        agent.on('close', (error) => {
          void lock.release();
          // The agent hung up or broke the protocol while this process still used it.
          if (error && this.#agent === agent && !this.#stopping) this.emit('error', error);
        });
        return;
      } catch (error) {
        await lock.release();
        throw error;
      }
    }
    throw new SandboxError(this.id, `all ${paths.agentSockets.length} agent ports are in use by other processes`);
  }

  /** Records that the VM is gone and releases what it used; `found` when discovered at attach. */
  async #recordVmGone(exit: VmExit, found: boolean): Promise<void> {
    let info: StopInfo | undefined;
    try {
      await this.#update(async (record) => {
        if (record.state !== 'running' && record.state !== 'paused') {
          // Another process stopped it (and recorded why): this one still hears of it.
          if (!found && record.state === 'stopped') info = record.stopReason ?? { reason: 'requested', detail: 'stopped by another process' };
          return;
        }
        info = {
          reason: exit.reason === 'unexpected' ? 'unexpected' : found ? 'unexpected' : 'guest',
          detail: exit.detail,
        };
        await this.#releaseVm(record);
        record.state = 'stopped';
        record.stopReason = info;
      });
    } catch (error) {
      if (!(error instanceof NotFoundError)) throw error;
      info = { reason: 'requested', detail: 'deleted by another process' }; // its record is gone too
      this.#record.state = 'deleted';
    }
    this.#closeAgent();
    if (info) this.emit('stopped', info);
  }

  #closeAgent(): void {
    this.#agent?.close();
    this.#agent = undefined;
    void this.#agentLock?.release();
    this.#agentLock = undefined;
  }

  /**
   * Releases the VM side of a sandbox: the hypervisor (killed if still alive), its sockets, the
   * containers' host mounts, then each resource (`stop` phase) in reverse order. Idempotent;
   * every step is tried even if one fails. `resources` defaults to all of the config's.
   */
  async #releaseVm(record: SandboxRecord, resources?: readonly SandboxResource[], phase: 'stop' | 'delete' = 'stop'): Promise<void> {
    const failures: unknown[] = [];
    const attempt = async (step: () => Promise<unknown>): Promise<void> => {
      try {
        await step();
      } catch (error) {
        failures.push(error);
      }
    };
    this.#closeAgent();
    const vm = record.vm;
    if (vm) {
      await attempt(async () => {
        if (this.#vm && !this.#vm.exited) await this.#vm.kill();
        else if (signalProcess(vm, 'SIGKILL')) await waitForProcessExit(vm, 10_000);
      });
      this.#vm?.detach();
      this.#vm = undefined;
      for (const socket of [...vm.controlSockets, ...vm.sockets]) await attempt(() => fs.rm(socket, { force: true }));
      delete record.vm;
      await attempt(() => this.#store.write(record));
    }
    await attempt(async () => {
      const released = await releaseMounts(record.mounts);
      record.mounts = record.mounts.filter((m) => !released.includes(m));
    });
    delete record.rootfsUsers; // their containers died with the VM
    this.#containers.clear();
    for (const resource of [...(resources ?? sandboxResources(record.config))].reverse()) {
      await attempt(() => resource.release(this.#resourceContext(record, resource), phase));
    }
    if (failures.length > 0) {
      throw new SandboxError(this.id, `could not release everything: ${failures.map((f) => (f as Error).message).join('; ')}`, {
        cause: failures[0],
      });
    }
  }

  /** Freezes the VM's vCPUs (`running` -> `paused`); QMP `stop`. */
  async pause(options: SandboxCallOptions = {}): Promise<void> {
    await this.#update(async (record) => {
      assertTransition('sandbox', this.label, record.state, 'paused');
      await this.#requireVm().pause(options);
      record.state = 'paused';
    }, options.signal);
  }

  /** Thaws the VM's vCPUs (`paused` -> `running`); QMP `cont`. */
  async resume(options: SandboxCallOptions = {}): Promise<void> {
    await this.#update(async (record) => {
      if (record.state !== 'paused') throw new InvalidStateError(this.label, record.state, 'paused', { action: 'resume()' });
      await this.#requireVm().resume(options);
      record.state = 'running';
      // The guest clock stood still while paused: set it again.
      if (this.#agent && !this.#agent.closed) await this.#agent.setTime(new Date(), options).catch(() => undefined);
    }, options.signal);
  }

  #requireVm(): VirtualMachine {
    if (!this.#vm) throw new SandboxError(this.id, 'this process is not connected to the VM');
    return this.#vm;
  }

  /**
   * Stops the VM (`running`/`paused` -> `stopped`): the agent stops every container and powers
   * the guest off; after `timeoutMs` (default 10 s) the hypervisor is told to quit, then killed.
   */
  async stop(options: SandboxCallOptions & { timeoutMs?: number } = {}): Promise<void> {
    let stopped: StopInfo | undefined;
    await this.#update(async (record) => {
      assertTransition('sandbox', this.label, record.state, 'stopped');
      this.#stopping = true;
      try {
        const vm = this.#vm;
        const agent = this.#agent;
        let detail = 'stop';
        if (vm && !vm.exited) {
          if (record.state === 'paused') await vm.resume().catch(() => undefined);
          const { method } = await vm.shutdown({
            gracefulTimeoutMs: options.timeoutMs ?? 10_000,
            ...(agent && !agent.closed ? { graceful: async (signal: AbortSignal) => agent.shutdown({ signal }) } : {}),
            ...(options.signal ? { signal: options.signal } : {}),
          });
          // Say when the guest did not power off in time and the hypervisor had to be ended.
          if (method === 'quit') detail = 'stop: the guest did not power off in time, the hypervisor was told to quit';
          if (method === 'kill') detail = 'stop: the guest did not power off in time, the hypervisor was killed';
        }
        await this.#releaseVm(record);
        record.state = 'stopped';
        stopped = { reason: 'requested', detail };
        record.stopReason = stopped;
      } finally {
        this.#stopping = false;
      }
    }, options.signal);
    if (stopped) this.emit('stopped', stopped);
  }

  /**
   * Removes the sandbox and everything it made on the host (`created`/`stopped` -> `deleted`).
   * A running sandbox needs `force` (it is stopped first). Safe to call again after a crash.
   */
  async delete(options: SandboxCallOptions & { force?: boolean } = {}): Promise<void> {
    if (this.#record.state === 'deleted') return;
    const fresh = await this.#store.read(this.id).catch((error: unknown) => {
      if (error instanceof NotFoundError) return undefined;
      throw error;
    });
    if (fresh) this.#record = fresh;
    if (this.#record.state === 'running' || this.#record.state === 'paused') {
      if (!options.force) assertTransition('sandbox', this.label, this.#record.state, 'deleted');
      if (this.#record.vm && isAlive(this.#record.vm)) {
        await this.stop({ ...options, timeoutMs: 3_000 });
      }
    }
    const lock = await this.#store.lock(this.id, options.signal ? { signal: options.signal } : {}).catch((error: unknown) => {
      if (error instanceof NotFoundError) return undefined;
      throw error;
    });
    try {
      if (fresh) await this.#releaseVm(this.#record, undefined, 'delete');
      await this.#store.remove(this.id);
    } finally {
      await lock?.release();
    }
    this.#record.state = 'deleted';
  }

  /** Closes this process's connections; the sandbox keeps running. */
  detach(): void {
    this.#closeAgent();
    this.#vm?.detach();
    this.#vm = undefined;
  }

  /** Deletes a sandbox this process created (stopping it first); detaches from an attached one. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#owned) await this.delete({ force: true });
    else this.detach();
  }

  /**
   * Creates a container (`created`; call `start()`): from an OCI bundle on the host, from a
   * rootfs directory, or from the builtin busybox rootfs. Its stdio streams are open before
   * it starts, so no output is missed.
   */
  async createContainer(options: ContainerConfig = {}): Promise<Container> {
    const { signal } = options;
    const id = options.id === undefined ? `c-${randomBytes(4).toString('hex')}` : validate.id(options.id, 'id');
    const overrides = checkOverrides(options.process ?? {});
    const volumes = checkContainerVolumes(options.volumes);
    const transport = options.rootfsTransport ?? 'virtiofs';
    const stdioVia = stdioTransport(options.stdio);
    if (transport !== 'virtiofs' && transport !== 'block') throw new InvalidArgumentError('rootfsTransport', 'must be "virtiofs" or "block"');
    if (options.bundle !== undefined && options.rootfs !== undefined) {
      throw new InvalidArgumentError('rootfs', 'give either a bundle or a rootfs, not both');
    }
    if (options.hostname !== undefined && !/^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})$/u.test(options.hostname)) {
      throw new InvalidArgumentError('hostname', `${JSON.stringify(options.hostname)} is not a valid hostname`);
    }
    let spec: OciSpec;
    let hostRootfs: string | undefined;
    if (options.bundle !== undefined) {
      const bundle = await readBundle(options.bundle);
      spec = applyOverrides(bundle.spec, overrides);
      hostRootfs = bundle.rootfs;
    } else {
      if (options.rootfs !== undefined && options.rootfs !== 'builtin') {
        hostRootfs = validate.absolutePath(options.rootfs, 'rootfs');
        if (!(await fs.stat(hostRootfs).catch(() => undefined))?.isDirectory()) {
          throw new InvalidArgumentError('rootfs', `${hostRootfs} is not a directory`);
        }
      }
      spec = applyOverrides(defaultSpec({ args: ['/bin/sh'], hostname: id, terminal: overrides.terminal ?? false }), overrides);
    }
    if (options.hostname !== undefined) spec.hostname = options.hostname;
    const adapted = adaptSpecForGuest(spec);
    if (((hostRootfs !== undefined && transport === 'virtiofs') || adapted.shares.length > 0) && !this.config.sharedFs) {
      throw new InvalidArgumentError('sharedFs', 'this sandbox has no shared filesystem: only the builtin rootfs can be used');
    }
    if (this.state !== 'running') throw new InvalidStateError(this.label, this.state, 'running', { action: 'creating a container' });
    void this.agent; // fails here, before anything is mounted, when this process has no agent connection
    if (this.#containers.has(id)) throw new AlreadyExistsError('container', id);
    const guestPages = this.config.hugepages?.guestPages ?? 0;
    adapted.spec.mounts!.push(
      ...(volumes.length === 0
        ? containerMounts(undefined, [], adapted.spec, guestPages)
        : await this.withResource(VOLUMES_KIND, async (ctx) => containerMounts(ctx.state, volumes, adapted.spec, guestPages), signal)),
    );
    const terminal = adapted.spec.process.terminal ?? false;
    const stdio = normaliseStdio(options.stdio, terminal);
    const hostBase = path.join(this.#paths().sharedDir, 'containers', id);
    const guestBase = `${this.#guestShared()}/containers/${id}`;
    try {
      const record = async (point: string): Promise<void> => {
        await this.#update((r) => {
          r.mounts.push(point);
        });
      };
      let rootfs = 'builtin';
      // The user's rootfs image replaces the builtin rootfs: copy-on-write over its mount.
      const overImage = hostRootfs === undefined && this.config.guest.rootfsImage !== undefined;
      if (overImage) rootfs = guestRootfsImageDir(this.#guestStateDir);
      if (hostRootfs !== undefined && transport === 'block') {
        rootfs = await blockRootfs(this, {
          rootfs: hostRootfs,
          disksDir: path.join(this.dir, 'disks'),
          containerId: id,
          readOnly: adapted.spec.root?.readonly === true,
          ...(signal ? { signal } : {}),
        });
      } else if (hostRootfs !== undefined) {
        rootfs = await this.#acquireRootfsShare(id, hostRootfs, adapted.spec.root?.readonly === true, signal);
      }
      for (const share of adapted.shares) {
        await bindIntoSharedDir(share.source, path.join(hostBase, 'mounts', String(share.index)), { readOnly: share.readOnly, record });
        adapted.spec.mounts![share.index]!.source = `${guestBase}/mounts/${share.index}`;
      }
      const { pid, stdio: streams } = await createInit(this, { id, config: adapted.spec, rootfs, ...(overImage ? { overlay: true } : {}), stdio, transport: stdioVia }, signal);
      const init = new Process(this, id, undefined, pid, streams);
      const container = new Container(this, id, 'created', init);
      this.#containers.set(id, container);
      return container;
    } catch (error) {
      await this.releaseContainer(id).catch(() => undefined);
      throw error;
    }
  }

  /** A container of this sandbox by id, whichever process created it. */
  async container(id: string, options: SandboxCallOptions = {}): Promise<Container> {
    validate.id(id);
    const known = this.#containers.get(id);
    if (known) return known;
    const info = (await this.agent.listContainers(options)).find((c) => c.id === id);
    if (!info) throw new NotFoundError('container', id);
    const state = info.status === 'stopped' ? 'stopped' : info.status === 'running' ? 'running' : 'created';
    const container = new Container(this, id, state, undefined);
    this.#containers.set(id, container);
    return container;
  }

  /**
   * Adds an interface to the running sandbox (q35): CNI ADD of a network, or an interface already
   * in its namespace, hot plugged as a NIC (QMP `getfd`, `netdev_add`, `device_add`) and
   * configured in the guest. See docs/sandbox-networking.md.
   */
  async addNetwork(options: AddNetworkOptions): Promise<SandboxInterfaceInfo> {
    return this.withResource(NETWORK_KIND, (ctx) => addSandboxNetwork(ctx, options), options.signal);
  }

  /** Removes an interface (by its name, or its CNI network's name) from the running sandbox; CNI DEL for a CNI one. */
  async removeNetwork(name: string, options: SandboxCallOptions = {}): Promise<void> {
    await this.withResource(NETWORK_KIND, (ctx) => removeSandboxNetwork(ctx, name), options.signal);
  }

  /**
   * Runs CNI CHECK for the sandbox's CNI networks (or the one of interface or network `name`),
   * as `cnitool check`: each plugin verifies what it made. One outcome per attachment; a plugin's
   * failure is in its outcome (`CniPluginError`), not thrown.
   */
  async checkNetwork(name?: string, options: SandboxCallOptions = {}): Promise<CniCheckOutcome[]> {
    return this.withResource(NETWORK_KIND, (ctx) => checkSandboxNetwork(ctx, name), options.signal);
  }

  /** Scans the sandbox's namespace again: plugs new interfaces, unplugs gone ones, mirrors changed addresses and routes. */
  async rescanNetwork(options: SandboxCallOptions = {}): Promise<RescanResult> {
    return this.withResource(NETWORK_KIND, (ctx) => rescanSandboxNetwork(ctx), options.signal);
  }

  /** The interfaces of the sandbox's network, from its record (whatever its state). */
  async networks(): Promise<SandboxInterfaceInfo[]> {
    return describeSandboxNetwork((await this.#store.read(this.id)).resources[NETWORK_KIND]);
  }

  /** Every container in the sandbox, as the agent reports them. */
  async containers(options: SandboxCallOptions = {}): Promise<ContainerInfo[]> {
    return this.agent.listContainers(options);
  }

  /**
   * Binds a container's rootfs directory into the shared directory, once per source directory
   * and read-only flag (`shared/rootfs/DEV-INO-ro|rw.RANDOM`), for every container that uses it: the
   * guest tells files apart by the mount they come through, so containers of one bundle then
   * share the guest's dentry and page caches instead of reading the binaries again (with
   * `sharedFsCache: 'always'` a second container's exec reads nothing from the host). Writes
   * are shared too, as with `runc run` of one bundle twice. Returns the guest path.
   */
  async #acquireRootfsShare(id: string, source: string, readOnly: boolean, signal?: AbortSignal): Promise<string> {
    const stat = await fs.stat(source);
    const key = `${stat.dev.toString(16)}-${stat.ino.toString(16)}-${readOnly ? 'ro' : 'rw'}`;
    const isBound = async (point: string): Promise<boolean> => {
      const there = await fs.stat(point).catch(() => undefined); // a bind shows the source's own inode
      return there?.dev === stat.dev && there.ino === stat.ino;
    };
    let point = '';
    // Under the lock, so two containers of one bundle created at once bind it once.
    await this.#update(async (record) => {
      const users = (record.rootfsUsers ??= {});
      const existing = Object.keys(users).find((p) => path.basename(p).startsWith(`${key}.`));
      if (existing !== undefined && (await isBound(existing))) {
        point = existing;
        users[point]!.push(id);
        await this.#store.write(record);
        if (readOnly) await mount(point, { source: null, flags: ['remount', 'bind', 'ro'] }); // in case a crash came between bind and remount
        return;
      }
      // A new bind gets a path the guest has never seen: the guest keeps its view of a path
      // (a FUSE submount) after the host unbinds it, so a path is never used twice.
      point = path.join(this.#paths().sharedDir, 'rootfs', `${key}.${randomBytes(4).toString('hex')}`);
      users[point] = [id];
      record.mounts.push(point);
      await this.#store.write(record); // before the mount: a crash leaves a note for release
      await bindIntoSharedDir(source, point, { readOnly, record: async () => undefined });
    }, signal);
    return `${this.#guestShared()}/rootfs/${path.basename(point)}`;
  }

  /** @internal Releases the host mounts of container `id` (and its rootfs bind when it was the last user). */
  async releaseContainer(id: string): Promise<void> {
    this.#containers.delete(id);
    const ownVolumes = volumesState(this.#record.resources[VOLUMES_KIND]).volumes.some((v) => v.container === id);
    if (ownVolumes && this.state === 'running') await releaseContainerVolumes(this, id);
    const hostBase = path.join(this.#paths().sharedDir, 'containers', id);
    const unusedRootfs: string[] = [];
    await this.#update(async (record) => {
      const mine = record.mounts.filter((m) => m === hostBase || m.startsWith(`${hostBase}/`));
      for (const [point, users] of Object.entries(record.rootfsUsers ?? {})) {
        if (!users.includes(id)) continue;
        const others = users.filter((u) => u !== id);
        if (others.length > 0) {
          record.rootfsUsers![point] = others;
        } else {
          delete record.rootfsUsers![point];
          mine.push(point);
          unusedRootfs.push(point);
        }
      }
      const released = await releaseMounts(mine);
      record.mounts = record.mounts.filter((m) => !released.includes(m));
      releaseStreamPorts(record, id);
    });
    await removeTree(hostBase);
    for (const point of unusedRootfs) await removeTree(point);
  }

  /** @internal */
  containerExited(id: string, status: ExitStatus): void {
    this.emit('containerExit', id, status);
  }
}

function stateDirOf(options: { stateDir?: string }): string {
  return validate.absolutePath(options.stateDir ?? process.env['VMPOD_STATE_DIR'] ?? DEFAULT_STATE_DIR, 'stateDir');
}

function newStore(root: string): StateStore<SandboxRecord> {
  return new StateStore<SandboxRecord>(root, checkRecord);
}
