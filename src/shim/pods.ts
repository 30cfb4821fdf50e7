/**
 * Pods of the containerd shim: one vmpod {@link Sandbox} (one VM) per Kubernetes pod.
 *
 * The pod of a container is `sandboxName(id, annotations)`: the CRI annotation
 * `io.kubernetes.cri.sandbox-id`, else the container's own id (so `ctr run` makes a pod of one).
 * The pod's sandbox container (`io.kubernetes.cri.container-type=sandbox`, or a container without
 * a CRI type) boots the VM, sized from the pod's annotations ({@link podSize}) and given the
 * interfaces of the network namespace CRI made with CNI (none: the VM has no NIC); the app
 * containers (`container-type=container`) join it. The VM is deleted with the pod's last task.
 *
 * The VM lives in the library's state directory (so `vmpod ps` shows it), as sandbox
 * `librarySandboxId(pod)`. Next to it the shim keeps a small record per pod
 * (`STATEDIR/shim/NAMESPACE/pods/SANDBOX.json`, written atomically): the pod, its sandbox and its
 * task ids. After a crash of the server, containerd runs `delete` per task, and
 * {@link Pods.cleanupAfterCrash} uses that record (and containerd's bundle folders) to remove the
 * VM once no task of the pod is left.
 *
 * @module
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Container } from '../container/container.js';
import type { OciSpec } from '../container/spec.js';
import { AlreadyExistsError, InvalidArgumentError, InvalidStateError, NotFoundError, VmpodError } from '../errors.js';
import type { CallOptions } from '../options.js';
import type { Sandbox, SandboxConfig } from '../sandbox/sandbox.js';
import { MAX_MEMORY_MIB } from '../sandbox/config.js';
import { isAlive, isProcessIdentity, readProcStat, type ProcessIdentity } from '../host/process.js';
import type { StopInfo } from '../sandbox/types.js';
import { stateRootOf } from '../sandbox/registry.js';
import { writeFileAtomic } from '../state/atomic.js';
import { FileLock } from '../state/lock.js';
import { criContainerRole, librarySandboxId, networkNamespace, sandboxName, vmSize } from '../runtime/sandbox-choice.js';
import type { ShimLog } from './log.js';
import { GrpcCode, TtrpcError } from './ttrpc/status.js';

/** How long a failed container delete waits for news of its VM's death before it counts as a failure. */
const VM_EXIT_GRACE_MS = 3000;

/** The runtime spec of a task (config.json, parsed). */
export type RuntimeSpec = OciSpec;

/** What {@link Pods.createContainer} needs of a task. */
export interface PodContainerRequest {
  /** containerd's container (task) id. */
  id: string;
  /** The bundle folder: config.json, and the rootfs already mounted on BUNDLE/rootfs. */
  bundle: string;
  /** The parsed config.json. */
  spec: RuntimeSpec;
  /** Open a stdin stream; a terminal (one output) instead of stdout and stderr. */
  stdio: { stdin: boolean; terminal: boolean };
}

/** A pod as the shim holds it. */
export interface Pod {
  /** The pod's name (CRI's sandbox id, or the container id). */
  readonly name: string;
  /** Its VM. */
  readonly sandbox: Sandbox;
  /** The task ids of its containers. */
  readonly containers: ReadonlySet<string>;
  /** The VM died (or was removed behind the shim's back). */
  readonly vmExited: boolean;
}

/** CRI annotations (containerd 1.6) with the pod's resources. */
export const CRI_SANDBOX_MEMORY = 'io.kubernetes.cri.sandbox-memory';
export const CRI_SANDBOX_CPU_QUOTA = 'io.kubernetes.cri.sandbox-cpu-quota';
export const CRI_SANDBOX_CPU_PERIOD = 'io.kubernetes.cri.sandbox-cpu-period';

/**
 * Guest RAM added to the pod's memory limit: the guest kernel, the agent, the pause process and
 * the page cache of the shared filesystem. A q35 guest with the default kernel boots in 86 MiB
 * (SandboxConfig.memoryMiB); 128 MiB leaves room for its buffers.
 */
export const POD_MEMORY_OVERHEAD_MIB = 128;
/** The least guest RAM of a pod VM: the library's default. */
export const POD_MIN_MEMORY_MIB = 256;
/**
 * Agent ports of a pod VM. The server is one process and talks to the guest over one agent
 * connection, whatever the number of containers and execs (the agent multiplexes them); the other
 * ports are for `vmpod exec`/`vmpod ps` by an operator and for the `delete` command after a crash.
 */
export const POD_AGENT_PORTS = 4;

const MIB = 1024 * 1024;
/** The kernel's CFS period when the annotations give a quota without one (100 ms). */
const DEFAULT_CPU_PERIOD_US = 100_000;

function annotationsOf(spec: RuntimeSpec): Record<string, string> {
  const value = spec['annotations'];
  if (value === undefined || value === null) return {};
  if (typeof value !== 'object' || Array.isArray(value)) throw new InvalidArgumentError('annotations', 'must be an object of strings');
  for (const [key, text] of Object.entries(value)) {
    if (typeof text !== 'string') throw new InvalidArgumentError(`annotations.${key}`, 'must be a string');
  }
  return value as Record<string, string>;
}

function integerAnnotation(annotations: Record<string, string>, key: string): number | undefined {
  const text = annotations[key];
  if (text === undefined || text === '') return undefined;
  if (!/^-?[0-9]{1,19}$/u.test(text) || !Number.isSafeInteger(Number(text))) {
    throw new InvalidArgumentError(`annotations.${key}`, `${JSON.stringify(text)} is not an integer`);
  }
  return Number(text);
}

/**
 * The VM size of a pod, from the annotations of its sandbox container:
 *
 * - RAM (MiB): with `io.kubernetes.cri.sandbox-memory` = B bytes (B > 0), ceil(B / 1 MiB) +
 *   {@link POD_MEMORY_OVERHEAD_MIB}, at least {@link POD_MIN_MEMORY_MIB}; else vmpod's
 *   `io.vmpod.sandbox.memory-mib`; else {@link POD_MIN_MEMORY_MIB}.
 * - vCPUs: with a quota Q > 0 (`io.kubernetes.cri.sandbox-cpu-quota`) and a period P
 *   (`-cpu-period`, 100000 when 0 or absent), ceil(Q / P), at least 1, at most `hostCpus`; else
 *   vmpod's `io.vmpod.sandbox.cpus`; else 1. A quota of 0 or -1 is no limit; CPU shares are a
 *   weight, not a size, and are not used.
 *
 * Values that are not integers, a negative memory or period, or a memory beyond what a VM can
 * have are refused with an {@link InvalidArgumentError} naming the annotation.
 */
export function podSize(annotations: Record<string, string>, hostCpus = os.availableParallelism()): { cpus: number; memoryMiB: number } {
  let own: { cpus?: number; memoryMiB?: number };
  try {
    own = vmSize(annotations);
  } catch (error) {
    throw new InvalidArgumentError('annotations', (error as Error).message, { cause: error });
  }
  const size = { cpus: own.cpus ?? 1, memoryMiB: own.memoryMiB ?? POD_MIN_MEMORY_MIB };
  const bytes = integerAnnotation(annotations, CRI_SANDBOX_MEMORY);
  if (bytes !== undefined) {
    if (bytes < 0) throw new InvalidArgumentError(`annotations.${CRI_SANDBOX_MEMORY}`, `${bytes} is negative`);
    if (bytes > 0) {
      const memoryMiB = Math.max(POD_MIN_MEMORY_MIB, Math.ceil(bytes / MIB) + POD_MEMORY_OVERHEAD_MIB);
      if (memoryMiB > MAX_MEMORY_MIB) throw new InvalidArgumentError(`annotations.${CRI_SANDBOX_MEMORY}`, `${bytes} bytes is more than a VM can have (${MAX_MEMORY_MIB} MiB)`);
      size.memoryMiB = memoryMiB;
    }
  }
  const quota = integerAnnotation(annotations, CRI_SANDBOX_CPU_QUOTA);
  const period = integerAnnotation(annotations, CRI_SANDBOX_CPU_PERIOD);
  if (period !== undefined && period < 0) throw new InvalidArgumentError(`annotations.${CRI_SANDBOX_CPU_PERIOD}`, `${period} is negative`);
  if (quota !== undefined && quota < -1) throw new InvalidArgumentError(`annotations.${CRI_SANDBOX_CPU_QUOTA}`, `${quota} is neither a quota nor -1 (no limit)`);
  if (quota !== undefined && quota > 0) {
    const p = period === undefined || period === 0 ? DEFAULT_CPU_PERIOD_US : period;
    size.cpus = Math.min(Math.max(1, Math.ceil(quota / p)), Math.max(1, hostCpus));
  }
  return size;
}

/** The pod a task belongs to, and whether it boots the pod's VM (`sandbox`), joins it (`container`) or either (no CRI type). */
export function podOf(id: string, spec: RuntimeSpec): { pod: string; sandboxId: string; role: 'sandbox' | 'container' | undefined } {
  const annotations = annotationsOf(spec);
  let pod: string;
  try {
    pod = sandboxName(id, annotations);
  } catch (error) {
    throw new InvalidArgumentError('annotations', (error as Error).message, { cause: error });
  }
  return { pod, sandboxId: librarySandboxId(pod), role: criContainerRole(annotations) };
}

/**
 * The guest's hostname: the sandbox container's (the pod's). CRI gives it to the sandbox container
 * only; the app containers share its UTS namespace by path, which has no meaning in the guest, so
 * they take the guest's own hostname (`uname -n`). A name the network config would refuse is left
 * out (the guest is then named after the sandbox).
 */
export function podHostname(spec: RuntimeSpec): { hostname?: string } {
  const name = spec.hostname;
  return typeof name === 'string' && /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/u.test(name) ? { hostname: name } : {};
}

/** A task's container id in the VM (containerd allows ids the library does not). */
export function libraryContainerId(taskId: string): string {
  return librarySandboxId(taskId);
}

/** What the shim keeps of a pod on disk. */
interface PodRecord {
  format: 1;
  namespace: string;
  pod: string;
  sandbox: string;
  /** Task ids of the pod's containers (added before each is made, removed once it is deleted). */
  containers: string[];
  /** The server process that holds the pod (the last to write the record). */
  server?: ProcessIdentity;
}

function selfIdentity(): ProcessIdentity | undefined {
  const stat = readProcStat(process.pid);
  return stat === undefined ? undefined : { pid: process.pid, startTime: stat.startTime };
}

/** The record's server is another process, and it runs: the pod is its to release. */
function serverAlive(r: PodRecord): boolean {
  return r.server !== undefined && isProcessIdentity(r.server) && r.server.pid !== process.pid && isAlive(r.server);
}

/** The shim's folder of a containerd namespace's pods under the state directory `root`. */
export function podRecordsDir(root: string, namespace: string): string {
  return path.join(root, 'shim', librarySandboxId(namespace), 'pods');
}

async function readPodRecord(file: string): Promise<PodRecord | undefined> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  const r = JSON.parse(text) as Partial<PodRecord>;
  if (r.format !== 1 || typeof r.pod !== 'string' || typeof r.sandbox !== 'string' || !Array.isArray(r.containers) || !r.containers.every((c) => typeof c === 'string')) {
    throw new VmpodError('ERR_VMPOD_CORRUPT_STATE', `the pod record ${file} is not one the shim wrote`);
  }
  return r as PodRecord;
}

/** The pod records of one namespace: one lock file for all (taken only around a read-change-write). */
class PodRecords {
  constructor(readonly dir: string) {}

  file(sandboxId: string): string {
    return path.join(this.dir, `${sandboxId}.json`);
  }

  async lock(options: CallOptions = {}): Promise<FileLock> {
    await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
    return FileLock.acquire(path.join(this.dir, '.lock'), { timeoutMs: 60_000, ...(options.signal ? { signal: options.signal } : {}) });
  }

  /** Changes the record of `sandboxId` under the lock; `change` returns the new record, or null to remove it. */
  async update(sandboxId: string, change: (r: PodRecord | undefined) => PodRecord | null | undefined, options: CallOptions = {}): Promise<PodRecord | null | undefined> {
    const lock = await this.lock(options);
    try {
      const file = this.file(sandboxId);
      const next = change(await readPodRecord(file));
      if (next === null) await fs.rm(file, { force: true });
      else if (next !== undefined) {
        const server = selfIdentity();
        await writeFileAtomic(file, `${JSON.stringify(server === undefined ? next : { ...next, server })}\n`);
      }
      return next;
    } finally {
      await lock.release();
    }
  }

  /** The records that name task `id`. */
  async naming(id: string): Promise<PodRecord[]> {
    const names = await fs.readdir(this.dir).catch(() => [] as string[]);
    const found: PodRecord[] = [];
    for (const name of names.filter((n) => n.endsWith('.json') && !n.startsWith('.'))) {
      const r = await readPodRecord(path.join(this.dir, name)).catch(() => undefined);
      if (r?.containers.includes(id)) found.push(r);
    }
    return found;
  }
}

/** How pods reach the library's sandboxes (a fake in unit tests). */
export interface PodBackend {
  /** Records and boots a sandbox. */
  boot(config: SandboxConfig, options: CallOptions): Promise<Sandbox>;
  /** Takes over a recorded sandbox (for the `delete` command), or undefined when there is none. */
  attach(id: string, stateDir: string | undefined): Promise<Sandbox | undefined>;
  /** Removes a sandbox from its record (force, its VM killed at once), whatever its state; no such sandbox is fine. */
  remove(id: string, stateDir: string | undefined): Promise<void>;
}

/** The library's sandboxes. */
export const libraryBackend: PodBackend = {
  async boot(config, options) {
    const { Sandbox } = await import('../sandbox/sandbox.js');
    const sandbox = await Sandbox.create(config, options);
    try {
      await sandbox.start(options);
    } catch (error) {
      await sandbox.delete({ force: true }).catch((cleanup: unknown) => Object.assign(error as Error, { cleanupError: cleanup }));
      throw error;
    }
    return sandbox;
  },
  async attach(id, stateDir) {
    const { Sandbox } = await import('../sandbox/sandbox.js');
    try {
      return await Sandbox.attach(id, stateDir === undefined ? {} : { stateDir });
    } catch (error) {
      if (error instanceof NotFoundError) return undefined;
      throw error;
    }
  },
  async remove(id, stateDir) {
    const { Sandbox } = await import('../sandbox/sandbox.js');
    try {
      // At once (timeoutMs 0: no graceful power-off): the pod's processes are being torn down anyway.
      await Sandbox.remove(id, { ...(stateDir === undefined ? {} : { stateDir }), force: true, timeoutMs: 0 });
    } catch (error) {
      if (!(error instanceof NotFoundError)) throw error;
    }
  },
};

class PodEntry implements Pod {
  readonly containers = new Set<string>();
  /** Container objects by task id. */
  readonly objects = new Map<string, Container>();
  vmExited = false;
  /** This process is deleting the VM: its end is no surprise. */
  releasing = false;
  /** Resolves when the VM's unexpected end is known (`vmExited` set). */
  readonly exited: Promise<void>;
  markExited!: () => void;
  constructor(
    readonly name: string,
    readonly sandboxId: string,
    readonly sandbox: Sandbox,
  ) {
    this.exited = new Promise((resolve) => {
      this.markExited = resolve;
    });
  }

  /** True when the VM's end is known now or becomes known within `ms`. */
  async exitKnownWithin(ms: number): Promise<boolean> {
    if (this.vmExited) return true;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
    });
    await Promise.race([this.exited, late]);
    clearTimeout(timer);
    return this.vmExited;
  }
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** The pods of one containerd namespace, in the shim's server process. */
export class Pods {
  readonly #stateDir: string | undefined;
  readonly #namespace: string;
  readonly #log: ShimLog;
  readonly #backend: PodBackend;
  readonly #records: PodRecords;
  readonly #pods = new Map<string, PodEntry>();
  /** Task id -> its pod. */
  readonly #tasks = new Map<string, PodEntry>();
  /** Per-pod queue: boots, joins and releases of one pod run one at a time. */
  readonly #queues = new Map<string, Promise<void>>();
  readonly #vmExitCallbacks: ((podId: string) => void)[] = [];

  /**
   * `stateDir`: the library's state directory (default `/run/vmpod`, or `$VMPOD_STATE_DIR`), where
   * the pods' VMs are recorded and the shim keeps its pod records. `namespace`: containerd's.
   */
  constructor(options: { stateDir?: string; namespace: string; log: ShimLog; /** a stand-in for unit tests */ backend?: PodBackend }) {
    this.#stateDir = options.stateDir;
    this.#namespace = options.namespace;
    this.#log = options.log;
    this.#backend = options.backend ?? libraryBackend;
    this.#records = new PodRecords(podRecordsDir(stateRootOf({ stateDir: options.stateDir }), options.namespace));
  }

  /** The pod of task `id`, if it has one here. */
  podOf(id: string): Pod | undefined {
    return this.#tasks.get(id);
  }

  /** Runs `fn` after every earlier operation on pod `pod` has ended. */
  async #exclusive<T>(pod: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.#queues.get(pod) ?? Promise.resolve();
    const run = previous.then(fn);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.#queues.set(pod, tail);
    try {
      return await run;
    } finally {
      if (this.#queues.get(pod) === tail) this.#queues.delete(pod);
    }
  }

  /**
   * Boots the pod's VM for its sandbox container, or joins the running pod's VM, then creates the
   * container there from the bundle (not started). Containers of one pod are created one at a
   * time: two creates never boot two VMs. An app container whose pod is not here fails with
   * NotFoundError; a second sandbox container of a pod, or a task id in use, with
   * AlreadyExistsError; bad annotations with InvalidArgumentError (nothing is made then).
   */
  async createContainer(request: PodContainerRequest, options: CallOptions = {}): Promise<{ pod: Pod; container: Container }> {
    const { pod: name, sandboxId, role } = podOf(request.id, request.spec);
    // Checked before the queue: a bad size fails at once, and nothing is made.
    const size = role === 'container' ? undefined : podSize(annotationsOf(request.spec));
    return this.#exclusive(name, async () => {
      if (this.#tasks.has(request.id)) throw new AlreadyExistsError('task', request.id);
      let entry = this.#pods.get(name);
      if (entry && role === 'sandbox') throw new AlreadyExistsError('pod', name);
      if (entry?.vmExited) throw new InvalidStateError(`pod ${name}`, 'stopped', 'running', { message: `the VM of pod ${name} is gone: no container can join it` });
      if (!entry && role === 'container') throw new TtrpcError(GrpcCode.NOT_FOUND, `pod ${name} of container ${request.id} does not exist (its sandbox container was not created here)`);
      entry ??= await this.#boot(name, sandboxId, request, size!, options);
      return { pod: entry, container: await this.#create(entry, request, options) };
    });
  }

  async #boot(name: string, sandboxId: string, request: PodContainerRequest, size: { cpus: number; memoryMiB: number }, options: CallOptions): Promise<PodEntry> {
    const netns = networkNamespace(request.spec);
    // The record comes first: a crash during the boot leaves what `delete` needs to remove the VM.
    await this.#records.update(sandboxId, (r) => {
      if (r) throw new AlreadyExistsError('pod record', `${sandboxId} (of task ${r.containers.join(', ') || 'none'})`);
      return { format: 1, namespace: this.#namespace, pod: name, sandbox: sandboxId, containers: [request.id] };
    }, options);
    this.#log.info(`pod ${name}: booting sandbox ${sandboxId} (${size.cpus} vCPU, ${size.memoryMiB} MiB${netns === undefined ? ', no network' : `, the interfaces of ${netns}`})`);
    const config: SandboxConfig = {
      id: sandboxId,
      ...(this.#stateDir === undefined ? {} : { stateDir: this.#stateDir }),
      cpus: size.cpus,
      memoryMiB: size.memoryMiB,
      agentPorts: POD_AGENT_PORTS,
      ...(netns === undefined ? {} : { network: { netns, ...podHostname(request.spec) } }),
    };
    let sandbox: Sandbox;
    try {
      sandbox = await this.#backend.boot(config, options);
    } catch (error) {
      await this.#records.update(sandboxId, (r) => (r?.pod === name ? null : undefined)).catch((cleanup: unknown) => Object.assign(error as Error, { cleanupError: cleanup }));
      throw error;
    }
    const entry = new PodEntry(name, sandboxId, sandbox);
    this.#pods.set(name, entry);
    sandbox.on('error', (error) => this.#log.warn(`pod ${name}: ${errorText(error)}`));
    sandbox.on('stopped', (info: StopInfo) => this.#vmStopped(entry, info));
    this.#log.info(`pod ${name}: sandbox ${sandboxId} runs (VM pid ${sandbox.pid ?? 'unknown'})`);
    return entry;
  }

  async #create(entry: PodEntry, request: PodContainerRequest, options: CallOptions): Promise<Container> {
    await this.#records.update(entry.sandboxId, (r) => {
      if (!r) return { format: 1, namespace: this.#namespace, pod: entry.name, sandbox: entry.sandboxId, containers: [request.id] };
      return r.containers.includes(request.id) ? undefined : { ...r, containers: [...r.containers, request.id] };
    }, options);
    entry.containers.add(request.id);
    this.#tasks.set(request.id, entry);
    try {
      const container = await entry.sandbox.createContainer({
        id: libraryContainerId(request.id),
        bundle: request.bundle,
        process: { terminal: request.stdio.terminal },
        stdio: { stdin: request.stdio.stdin, stdout: true, stderr: !request.stdio.terminal },
        // containerd (CRI) keeps the logs: what the shim reads from the streams goes to it.
        log: false,
        ...(options.signal ? { signal: options.signal } : {}),
        ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
      });
      entry.objects.set(request.id, container);
      this.#log.debug(`pod ${entry.name}: container ${request.id} created`);
      return container;
    } catch (error) {
      await this.#forget(entry, request.id).catch((cleanup: unknown) => Object.assign(error as Error, { cleanupError: cleanup }));
      throw error;
    }
  }

  /** Takes task `id` out of its pod; deletes the pod's VM when it was the last. */
  async #forget(entry: PodEntry, id: string): Promise<void> {
    entry.containers.delete(id);
    entry.objects.delete(id);
    this.#tasks.delete(id);
    if (entry.containers.size > 0) {
      await this.#records.update(entry.sandboxId, (r) => (r ? { ...r, containers: r.containers.filter((c) => c !== id) } : undefined));
      return;
    }
    entry.releasing = true;
    this.#pods.delete(entry.name);
    this.#log.info(`pod ${entry.name}: its last task is gone, deleting sandbox ${entry.sandboxId}`);
    try {
      await entry.sandbox.delete({ force: true });
    } catch (error) {
      if (!(error instanceof NotFoundError)) {
        // Another try from the record alone (its VM killed from the recorded pid).
        this.#log.warn(`pod ${entry.name}: deleting sandbox ${entry.sandboxId}: ${errorText(error)}; removing it from its record`);
        await this.#backend.remove(entry.sandboxId, this.#stateDir);
      }
    }
    await this.#records.update(entry.sandboxId, (r) => (r?.pod === entry.name ? null : undefined));
  }

  #vmStopped(entry: PodEntry, info: StopInfo): void {
    if (entry.releasing || entry.vmExited) return;
    entry.vmExited = true;
    entry.markExited();
    this.#log.warn(`pod ${entry.name}: its VM stopped (${info.reason}: ${info.detail})`);
    for (const cb of this.#vmExitCallbacks) {
      try {
        cb(entry.name);
      } catch (error) {
        this.#log.error(`pod ${entry.name}: a VM exit callback failed: ${errorText(error)}`);
      }
    }
  }

  /** `cb(podId)` once per pod whose VM is gone without the shim deleting it (QEMU died, the sandbox was stopped or removed by someone else). */
  onVmExit(cb: (podId: string) => void): void {
    this.#vmExitCallbacks.push(cb);
  }

  /**
   * Deletes task `id`'s container from its VM (killing what still runs in it); when it was the
   * pod's last task, deletes the VM and everything of it (the library's `delete`). A task this
   * object does not know is fine (already released). After the VM died, only the host side is left
   * to release.
   */
  async releaseContainer(id: string, options: CallOptions = {}): Promise<void> {
    const known = this.#tasks.get(id);
    if (!known) return;
    await this.#exclusive(known.name, async () => {
      const entry = this.#tasks.get(id);
      if (!entry) return;
      const container = entry.objects.get(id);
      const last = entry.containers.size === 1;
      if (container && !entry.vmExited && !last) {
        try {
          await container.delete({ force: true, ...(options.signal ? { signal: options.signal } : {}), ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }) });
        } catch (error) {
          // The VM may have died an instant ago: the delete fails (no agent) before the library's
          // watch of QEMU has told us (~150 ms later, seen with kill -9 of QEMU under CRI).
          if (!(error instanceof NotFoundError) && !(await entry.exitKnownWithin(VM_EXIT_GRACE_MS))) throw error;
        }
      }
      // The last one goes with the VM: the sandbox's delete stops it and releases every container's host side.
      await this.#forget(entry, id);
      this.#log.debug(`pod ${entry.name}: container ${id} deleted`);
    });
  }

  /** The host pid to report for task `id`: its pod's QEMU, 0 when unknown (or gone). */
  hostPid(id: string): number {
    const entry = this.#tasks.get(id);
    if (!entry || entry.vmExited) return 0;
    return entry.sandbox.pid ?? 0;
  }

  /**
   * The `delete` command after a crash of the server: removes task `id` (bundle `bundle`, whose
   * config.json names its pod) from its pod's VM if the VM answers, and from the shim's pod
   * record; when no other task of the pod is left (none in the record whose bundle folder
   * containerd still has next to this one), removes the pod's VM and the record. A task the
   * shim has no record of is fine, and so is one whose pod's server still runs (containerd runs
   * `delete` after every closed connection to the shim, also after a task's normal end): that pod
   * is left to its server.
   */
  static async cleanupAfterCrash(options: { stateDir?: string; namespace: string; id: string; bundle: string; /** a stand-in for unit tests */ backend?: PodBackend; log?: ShimLog }): Promise<void> {
    const backend = options.backend ?? libraryBackend;
    const records = new PodRecords(podRecordsDir(stateRootOf({ stateDir: options.stateDir }), options.namespace));
    // The pod, from the bundle's spec (containerd removes the bundle after `delete`: it is there),
    // and any record that names the task.
    const spec = await fs.readFile(path.join(options.bundle, 'config.json'), 'utf8').then((t) => JSON.parse(t) as RuntimeSpec, () => undefined);
    let fromSpec: string | undefined;
    try {
      fromSpec = spec === undefined ? undefined : podOf(options.id, spec).sandboxId;
    } catch {
      fromSpec = undefined; // annotations the shim would have refused: only a record can name its pod
    }
    const candidates = new Set([...(fromSpec === undefined ? [] : [fromSpec]), ...(await records.naming(options.id)).map((r) => r.sandbox)]);
    // containerd keeps one folder per task next to this one (io.containerd.runtime.v2.task/NAMESPACE/ID).
    const tasksDir = path.dirname(path.resolve(options.bundle));
    for (const sandboxId of candidates) {
      const record = await readPodRecord(records.file(sandboxId)).catch(() => undefined);
      if (!record?.containers.includes(options.id)) continue;
      // containerd runs `delete` whenever its connection to the shim closes, also while the server
      // lives on: then the server still holds the pod, and releases it through the Task API.
      if (serverAlive(record)) {
        options.log?.info(`pod ${record.pod}: its server (pid ${record.server!.pid}) runs: task ${options.id} is left to it`);
        continue;
      }
      // containerd gives `delete` a few seconds (5 in 1.6) before it kills it: the decision and the
      // record first, the VM's removal without a graceful stop, the container's removal last.
      let removeVm = false;
      let removeContainer = false;
      const lock = await records.lock();
      try {
        const r = await readPodRecord(records.file(sandboxId));
        if (!r || serverAlive(r)) continue; // another `delete` removed the pod meanwhile, or a server took it
        // The others containerd still knows (their bundle folders are there); a task it forgot is gone for good.
        const others: string[] = [];
        for (const c of r.containers) if (c !== options.id && (await fs.stat(path.join(tasksDir, c)).catch(() => undefined))) others.push(c);
        if (others.length === 0) {
          // Removed under the lock: a concurrent `delete` of the pod's other task waits, then finds no record.
          await backend.remove(sandboxId, options.stateDir);
          await fs.rm(records.file(sandboxId), { force: true });
          removeVm = true;
        } else {
          await writeFileAtomic(records.file(sandboxId), `${JSON.stringify({ ...r, containers: others })}\n`);
          removeContainer = true;
        }
      } finally {
        await lock.release();
      }
      // Out of the VM that runs on for the pod's other tasks (QEMU is detached from the server that died).
      if (removeContainer) await removeFromVm(backend, options.stateDir, sandboxId, options.id, options.log);
      options.log?.info(`pod ${record.pod}: task ${options.id} cleaned up after a crash${removeVm ? `; it was the last: sandbox ${sandboxId} removed` : ''}`);
    }
  }
}

/** Deletes container `id` from the VM of `sandboxId` if that VM runs and answers (bounded); never throws. */
async function removeFromVm(backend: PodBackend, stateDir: string | undefined, sandboxId: string, id: string, log: ShimLog | undefined): Promise<void> {
  let sandbox: Sandbox | undefined;
  try {
    sandbox = await backend.attach(sandboxId, stateDir);
    if (!sandbox || sandbox.state !== 'running') return;
    sandbox.on('error', () => undefined);
    const container = await sandbox.container(libraryContainerId(id), { timeoutMs: 3_000 });
    await container.delete({ force: true, timeoutMs: 3_000 });
  } catch (error) {
    if (!(error instanceof NotFoundError)) log?.warn(`sandbox ${sandboxId}: could not delete container ${id} from its VM: ${errorText(error)}`);
  } finally {
    sandbox?.detach();
  }
}
