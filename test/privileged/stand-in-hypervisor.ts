/**
 * A stand-in hypervisor for tests: its "VM" is the real vmpod-agent running on the host as a
 * detached process, so the sandbox lifecycle (create, start, containers, stop, delete, crashes,
 * races, attach from other processes) is tested in well under a second per boot, without QEMU.
 *
 * ```ts
 * const sandbox = await Sandbox.create({ stateDir, ...standInSandboxConfig() });
 * // = { hypervisor: new StandInHypervisor(), streamPorts: 0, guest: { kernel, initramfs, build: 'never' } }
 * ```
 *
 * What a sandbox config that uses it must say:
 * - `streamPorts: 0`: a host has no virtio-serial stream ports (the outputs then go through the
 *   agent). {@link StandInHypervisor.spawn} refuses every device it cannot stand in for rather than
 *   ignoring it: another virtio-serial device than the agent's (id `agent`), NICs (virtio-net,
 *   vhost-user-net), VFIO devices, disks, 9p, vsock, a virtio-fs share with another tag than `vmpod`.
 * - `guest: { kernel, initramfs }`: nothing boots them, but `Sandbox.start` resolves the guest
 *   assets whatever the hypervisor (and would build them if the cache is stale): the placeholders
 *   of {@link standInFiles} keep it from looking at the cache at all.
 * - The same hypervisor in every process: `Sandbox.attach(id, { stateDir, hypervisor: new StandInHypervisor() })`.
 *
 * How a boot maps onto the host:
 * - The VM process is `unshare --mount --propagation slave -- vmpod-agent --listen unix:PORT0
 *   --listen unix:PORT1 ... --state-dir RUNDIR/agent --builtin-rootfs ROOTFS --cgroup none
 *   [--share vmpod=SANDBOXDIR/shared] [--debug]`, started in its own session (`unshare` execs the
 *   agent: the recorded pid is the agent's). Its mount namespace is its own (a slave of the host's,
 *   so the binds the host makes into the share later show up in it, as virtiofsd's submounts do in
 *   a guest), and its mounts die with it.
 * - The share: the sandbox's virtiofsd still runs (nobody connects to it); the agent's virtiofs
 *   Mount of tag `vmpod` becomes a recursive bind of `SANDBOXDIR/shared` (what virtiofsd exports;
 *   the sandbox folder is the folder of `consoleLog`).
 * - The console is the agent's stderr, written to `config.output` (the sandbox's capped log pipe)
 *   or appended to `consoleLog`.
 * - The agent and everything it starts run in a cgroup2 group of their own,
 *   `vt-stand-in.PID.STARTTIME` (when the host has a cgroup2 hierarchy: /sys/fs/cgroup or
 *   /sys/fs/cgroup/unified), so that, as when a VM dies, nothing it ran outlives it: a container
 *   of a host agent is a host process, and would otherwise survive a SIGKILL of the agent. Pause
 *   freezes that group (the containers stop too, like vCPUs). Without cgroup2, pause is SIGSTOP of
 *   the agent alone, and the containers of an agent killed with SIGKILL outlive it. The group of
 *   an agent that is gone is killed and removed by the {@link StandInVm} that sees it go, else at
 *   the next spawn or attach, and by {@link cleanupStandIn} (call it in `afterAll`).
 *
 * @module
 */
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { EventEmitter } from 'eventemitter3';
import { AbortError, InvalidArgumentError, InvalidStateError, TimeoutError, VmpodError } from '../../src/errors.js';
import { waitForConsoleLine } from '../../src/hypervisor/console.js';
import { VmExitedError, VmStartError } from '../../src/hypervisor/errors.js';
import type {
  CallOptions,
  HotplugResult,
  Hypervisor,
  ShutdownOptions,
  ShutdownResult,
  SpawnedVm,
  VirtualMachine,
  VmConfig,
  VmDevice,
  VmEvents,
  VmExit,
  VmHandle,
} from '../../src/hypervisor/hypervisor.js';
import { isAlive, logTail, readProcStat, signalProcess, spawnDetached, waitForProcessExit, type ProcessIdentity } from '../../src/host/process.js';
import type { SandboxConfig } from '../../src/sandbox/config.js';
import { AGENT_BINARY, makeBusyboxRootfs } from './agent-host.js';

/** The hypervisor name in handles. */
export const STAND_IN = 'stand-in';
/** The virtio-fs tag of the sandbox's share (src/sandbox/resources/shared-fs.ts). */
export const STAND_IN_SHARE_TAG = 'vmpod';
const UNSHARE = '/usr/bin/unshare';
/** Name prefix of the agents' cgroups: `vt-stand-in.PID.STARTTIME`. */
const CGROUP_PREFIX = 'vt-stand-in.';
const CGROUP2_SUPER_MAGIC = 0x63677270;
/** How often a VM that is not this process's child is checked for life. */
const WATCH_INTERVAL_MS = 50;
/** What the agent's SIGTERM shutdown may take (it gives its containers 5 s to die). */
const QUIT_MS = 7_000;

/** The stand-in has no hotplug (no PCI, no QMP): the sandbox's hot-plugged networks, disks and devices are out of its reach. */
export class StandInNoHotplugError extends VmpodError {
  constructor(readonly vmId: string, what: string) {
    super('ERR_VMPOD_STAND_IN_NO_HOTPLUG', `vm "${vmId}": the stand-in hypervisor has no hotplug (${what}): use QEMU for that`);
  }
}

// --- Files of a test run --------------------------------------------------------------------------

/** What the stand-in boots from: made once per process, under os.tmpdir(), removed by {@link cleanupStandIn} or at exit. */
export interface StandInFiles {
  readonly dir: string;
  /** A busybox rootfs: the agent's `--builtin-rootfs`. */
  readonly rootfs: string;
  /** Empty placeholders for `guest.kernel` and `guest.initramfs` (nothing boots them). */
  readonly kernel: string;
  readonly initramfs: string;
}

let files: StandInFiles | undefined;

/**
 * The run's files, made on first use; a child process given `VMPOD_STAND_IN_DIR` (another
 * process's {@link StandInFiles.dir}) uses those and never removes them.
 */
export function standInFiles(): StandInFiles {
  if (files && fs.existsSync(files.rootfs)) return files;
  const given = process.env['VMPOD_STAND_IN_DIR'];
  if (given !== undefined && fs.existsSync(path.join(given, 'rootfs'))) {
    return { dir: given, rootfs: path.join(given, 'rootfs'), kernel: path.join(given, 'kernel'), initramfs: path.join(given, 'initramfs') };
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-stand-in-'));
  const made: StandInFiles = { dir, rootfs: path.join(dir, 'rootfs'), kernel: path.join(dir, 'kernel'), initramfs: path.join(dir, 'initramfs') };
  try {
    makeBusyboxRootfs(made.rootfs);
    fs.writeFileSync(made.kernel, '');
    fs.writeFileSync(made.initramfs, '');
  } catch (error) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  if (!files) process.once('exit', () => files && fs.rmSync(files.dir, { recursive: true, force: true }));
  files = made;
  return made;
}

/** The parts of a sandbox config that make it run on the stand-in. */
export function standInSandboxConfig(options: StandInHypervisorOptions = {}): { hypervisor: StandInHypervisor; streamPorts: 0; guest: NonNullable<SandboxConfig['guest']> } {
  const { kernel, initramfs } = standInFiles();
  return { hypervisor: new StandInHypervisor(options), streamPorts: 0, guest: { kernel, initramfs, build: 'never' } };
}

/**
 * Ends what stand-in VMs of this host left: the cgroups of agents that are gone (their processes
 * killed, the groups removed), then this process's files. For `afterAll`.
 */
export async function cleanupStandIn(): Promise<void> {
  await sweepCgroups();
  if (files) fs.rmSync(files.dir, { recursive: true, force: true });
  files = undefined;
}

// --- Cgroups ----------------------------------------------------------------------------------------

/** The host's cgroup2 hierarchy, or undefined. */
function cgroup2Root(): string | undefined {
  for (const dir of ['/sys/fs/cgroup', '/sys/fs/cgroup/unified']) {
    try {
      if (fs.statfsSync(dir).type === CGROUP2_SUPER_MAGIC) return dir;
    } catch {
      // not there
    }
  }
  return undefined;
}

/** The cgroup of the agent `identity` (whether or not it exists). */
function cgroupPath(identity: ProcessIdentity): string | undefined {
  const root = cgroup2Root();
  return root && path.join(root, `${CGROUP_PREFIX}${identity.pid}.${identity.startTime}`);
}

/** SIGKILL to every process of the group (`cgroup.kill`: also frozen ones, also those forked meanwhile). */
function killCgroup(dir: string): void {
  try {
    fs.writeFileSync(path.join(dir, 'cgroup.kill'), '1');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
}

function cgroupEvent(dir: string, key: 'populated' | 'frozen'): boolean {
  try {
    return fs.readFileSync(path.join(dir, 'cgroup.events'), 'utf8').includes(`${key} 1`);
  } catch {
    return false;
  }
}

/** Removes an empty group, waiting (at most `ms`) for its killed processes to be gone. */
async function removeCgroup(dir: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      fs.rmdirSync(dir);
      return;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      if (code !== 'EBUSY' || Date.now() >= deadline) throw error;
    }
    await sleep(10);
  }
}

/** Kills and removes the groups of agents that are gone. */
async function sweepCgroups(): Promise<void> {
  const root = cgroup2Root();
  if (!root) return;
  for (const name of fs.readdirSync(root)) {
    const match = /^vt-stand-in\.(\d+)\.(\d+)$/u.exec(name);
    if (!match || isAlive({ pid: Number(match[1]), startTime: Number(match[2]) })) continue;
    const dir = path.join(root, name);
    killCgroup(dir);
    await removeCgroup(dir).catch(() => undefined);
  }
}

// --- The agent's sockets ------------------------------------------------------------------------------

/** Paths of the unix sockets that listen in this network namespace (`/proc/net/unix`, flag __SO_ACCEPTCON). */
function listeningSockets(): Set<string> {
  const found = new Set<string>();
  const lines = fs.readFileSync('/proc/net/unix', 'latin1').split('\n').slice(1);
  for (const line of lines) {
    const fields = line.trim().split(/\s+/u);
    if (fields.length < 8 || (parseInt(fields[3] ?? '0', 16) & 0x10000) === 0) continue;
    found.add(fields.slice(7).join(' '));
  }
  return found;
}

/** What a VM config asks of the stand-in: the agent's ports and the share, or an error naming what it cannot give. */
function planOf(config: VmConfig): { ports: string[]; share: string | undefined } {
  let ports: string[] | undefined;
  let share: string | undefined;
  (config.devices ?? []).forEach((device: VmDevice, i) => {
    const field = `config.devices[${i}]`;
    const refuse = (why: string): never => {
      throw new InvalidArgumentError(field, `the stand-in hypervisor cannot provide ${device.kind} device "${device.id}": ${why}`);
    };
    switch (device.kind) {
      case 'virtio-serial':
        if (device.id !== 'agent') refuse('a host has no virtio-serial ports besides the agent\'s sockets (give the sandbox streamPorts: 0)');
        if (ports) refuse('the agent\'s ports are given twice');
        ports = device.ports.map((port) => port.socket);
        break;
      case 'vhost-user-fs':
        if (device.tag !== STAND_IN_SHARE_TAG) refuse(`only the sandbox's share (tag "${STAND_IN_SHARE_TAG}") is stood in for`);
        share = path.join(path.dirname(config.consoleLog), 'shared');
        if (!fs.statSync(share, { throwIfNoEntry: false })?.isDirectory()) refuse(`the share ${share} is not a directory`);
        break;
      default:
        refuse('it has no devices on a host (networks, NFV devices, disks, 9p and vsock need QEMU)');
    }
  });
  if (!ports || ports.length === 0) throw new InvalidArgumentError('config.devices', 'the stand-in hypervisor needs the agent\'s virtio-serial ports (a device with id "agent")');
  return { ports, share };
}

// --- The hypervisor -----------------------------------------------------------------------------------

/** Options of {@link StandInHypervisor}. */
export interface StandInHypervisorOptions {
  /** The agent binary (default: `$VMPOD_AGENT`, else build/Release/vmpod-agent). */
  readonly agent?: string;
  /** Time from spawn to every port listening (default 10 s). */
  readonly startTimeoutMs?: number;
}

/** How a child of this process ended. */
interface ChildExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

/** A stand-in VM just spawned: its handle, and the wait for its agent's sockets. */
export interface SpawnedStandIn extends SpawnedVm {
  ready(options?: CallOptions): Promise<StandInVm>;
}

/** The stand-in: each VM is a vmpod-agent on the host (see the module comment). */
export class StandInHypervisor implements Hypervisor {
  readonly name = STAND_IN;
  readonly agent: string;
  readonly #startTimeoutMs: number;

  constructor(options: StandInHypervisorOptions = {}) {
    this.agent = options.agent ?? AGENT_BINARY;
    this.#startTimeoutMs = options.startTimeoutMs ?? 10_000;
  }

  async start(config: VmConfig, options: CallOptions = {}): Promise<StandInVm> {
    const spawned = await this.spawn(config, options);
    return spawned.ready(options);
  }

  /** The command line of the agent of `config` (after `unshare`). */
  commandLine(config: VmConfig): string[] {
    const { ports, share } = planOf(config);
    const args = ['--mount', '--propagation', 'slave', '--', this.agent];
    for (const port of ports) args.push('--listen', `unix:${port}`);
    args.push('--state-dir', path.join(config.runDir, 'agent'), '--builtin-rootfs', standInFiles().rootfs, '--cgroup', 'none');
    if (share !== undefined) args.push('--share', `${STAND_IN_SHARE_TAG}=${share}`);
    if (config.kernelArgs?.includes('vmpod.debug=1')) args.push('--debug');
    return args;
  }

  /**
   * Starts the agent detached, in its own session and cgroup, and resolves at once with its
   * handle; `ready()` waits until every port listens.
   */
  async spawn(config: VmConfig, options: CallOptions = {}): Promise<SpawnedStandIn> {
    const args = this.commandLine(config);
    const { ports } = planOf(config);
    if (!fs.statSync(config.runDir, { throwIfNoEntry: false })?.isDirectory()) {
      throw new InvalidArgumentError('runDir', `${config.runDir} is not a directory`);
    }
    for (const socket of ports) {
      if (fs.lstatSync(socket, { throwIfNoEntry: false })?.isSocket()) fs.unlinkSync(socket);
    }
    if (options.signal?.aborted) throw new AbortError('VM start', { cause: options.signal.reason });
    await sweepCgroups();

    const proc = await spawnDetached(UNSHARE, args, { output: config.output ?? { file: config.consoleLog } });
    let childExit: ChildExit | undefined;
    proc.child.once('exit', (code, signal) => {
      childExit = { code, signal };
    });
    const identity = { pid: proc.pid, startTime: proc.startTime };
    // Into a group of its own before it forks anything (it forks only when asked, once it listens).
    let cgroup = cgroupPath(identity);
    if (cgroup) {
      try {
        fs.mkdirSync(cgroup);
        fs.writeFileSync(path.join(cgroup, 'cgroup.procs'), String(proc.pid));
      } catch (error) {
        signalProcess(identity, 'SIGKILL');
        await waitForProcessExit(identity, 5000);
        await removeCgroup(cgroup).catch(() => undefined);
        cgroup = undefined;
        throw new VmStartError(config.id, `cannot put the agent into a cgroup of its own: ${(error as Error).message}`, '', { cause: error });
      }
    }
    const handle: VmHandle = {
      hypervisor: STAND_IN,
      id: config.id,
      pid: proc.pid,
      startTime: proc.startTime,
      machine: config.machine ?? 'q35',
      controlSockets: [], // no control channel: the stand-in controls its agent with signals and its cgroup
      consoleLog: config.consoleLog,
      sockets: ports,
    };
    const defaultTimeout = this.#startTimeoutMs;
    return {
      handle,
      ready: async (ready: CallOptions = {}): Promise<StandInVm> => {
        const timeoutMs = ready.timeoutMs ?? defaultTimeout;
        const deadline = Date.now() + timeoutMs;
        const fail = async (error: Error): Promise<never> => {
          if (cgroup) killCgroup(cgroup);
          signalProcess(handle, 'SIGKILL');
          await waitForProcessExit(handle, 5000);
          if (cgroup) await removeCgroup(cgroup).catch(() => undefined);
          for (const socket of ports) fs.rmSync(socket, { force: true });
          throw error;
        };
        for (;;) {
          if (childExit !== undefined || !isAlive(handle)) {
            const how = childExit ? (childExit.signal ?? `exit code ${childExit.code ?? 'unknown'}`) : 'gone';
            return fail(new VmStartError(config.id, `the agent exited during start (${how})`, logTail(config.consoleLog)));
          }
          if (ready.signal?.aborted) return fail(new AbortError('VM start', { cause: ready.signal.reason }));
          const listening = listeningSockets();
          if (ports.every((port) => listening.has(port))) {
            return new StandInVm(handle, { child: proc.child, childExit: () => childExit, cgroup });
          }
          if (Date.now() >= deadline) {
            return fail(new VmStartError(config.id, `the agent's sockets did not listen within ${timeoutMs} ms`, logTail(config.consoleLog)));
          }
          await sleep(5);
        }
      },
    };
  }

  /**
   * Ends a stand-in VM from its handle alone, as a VM's death would end what runs in it: SIGKILL
   * to its whole cgroup (the agent and its containers, host processes here), then the group goes.
   */
  async kill(handle: VmHandle): Promise<void> {
    const cgroup = cgroupPath(handle);
    if (cgroup !== undefined && fs.existsSync(cgroup)) killCgroup(cgroup);
    if (isAlive(handle)) {
      signalProcess(handle, 'SIGKILL');
      if (!(await waitForProcessExit(handle, 10_000))) throw new VmExitedError(handle.id, `the agent (pid ${handle.pid}) did not die from SIGKILL`);
    }
    if (cgroup !== undefined && fs.existsSync(cgroup)) await removeCgroup(cgroup);
  }

  /** Takes control of a stand-in VM from its handle, in any process: checks it is still that agent. */
  async attach(handle: VmHandle, options: CallOptions = {}): Promise<StandInVm> {
    if (handle.hypervisor !== STAND_IN) throw new InvalidArgumentError('handle.hypervisor', `is "${handle.hypervisor}", not "${STAND_IN}"`);
    if (!Number.isInteger(handle.pid) || handle.pid < 2 || !Number.isInteger(handle.startTime)) throw new InvalidArgumentError('handle.pid', 'is not a process identity');
    if (options.signal?.aborted) throw new AbortError('VM attach', { cause: options.signal.reason });
    if (!isAlive(handle)) throw new VmExitedError(handle.id, `process ${handle.pid} is gone`);
    const argv0 = path.basename(fs.readFileSync(`/proc/${handle.pid}/cmdline`, 'utf8').split('\0')[0] ?? '');
    if (argv0 !== 'vmpod-agent' && argv0 !== 'unshare') throw new InvalidArgumentError('handle.pid', `process ${handle.pid} is ${argv0}, not a stand-in agent`);
    await sweepCgroups();
    const cgroup = cgroupPath(handle);
    return new StandInVm(handle, { cgroup: cgroup !== undefined && fs.existsSync(cgroup) ? cgroup : undefined });
  }
}

// --- The VM -----------------------------------------------------------------------------------------------

/**
 * A stand-in VM: a vmpod-agent on the host. pause/resume freeze/thaw its cgroup (SIGSTOP/SIGCONT
 * without one), shutdown is the caller's graceful step (else the agent's own power-off, SIGTERM),
 * then SIGTERM, then SIGKILL; its exit is seen through the child's exit event when this process
 * spawned it, else by polling its identity.
 */
export class StandInVm extends EventEmitter<VmEvents> implements VirtualMachine {
  readonly handle: VmHandle;
  #exit: VmExit | undefined;
  readonly #exitWaiters: ((exit: VmExit) => void)[] = [];
  /** Why the VM may go away without it being unexpected (our own SIGTERM or SIGKILL). */
  #expected: string | undefined;
  #watchTimer: NodeJS.Timeout | undefined;
  #child: ChildProcess | undefined;
  #onChildExit: ((code: number | null, signal: NodeJS.Signals | null) => void) | undefined;
  #detached = false;
  readonly #cgroup: string | undefined;
  /** The removal of the cgroup, once the agent is gone. */
  #cgroupRemoved: Promise<void> | undefined;

  /** @internal */
  constructor(handle: VmHandle, options: { child?: ChildProcess; childExit?: () => ChildExit | undefined; cgroup?: string | undefined }) {
    super();
    this.handle = handle;
    this.#cgroup = options.cgroup;
    const onChildExit = (code: number | null, signal: NodeJS.Signals | null): void => {
      this.#gone(signal ?? `exit code ${code ?? 'unknown'}`, code === 0);
    };
    const already = options.childExit?.();
    if (already) {
      setImmediate(() => onChildExit(already.code, already.signal));
    } else if (options.child) {
      this.#child = options.child;
      this.#onChildExit = onChildExit;
      options.child.once('exit', onChildExit);
    } else {
      this.#watchTimer = setInterval(() => {
        if (isAlive(this.handle)) return;
        // The agent removes its sockets when it shuts down by itself; a killed one leaves them.
        const clean = this.handle.sockets.every((socket) => !fs.existsSync(socket));
        this.#gone('the agent process is gone', clean);
      }, WATCH_INTERVAL_MS);
      this.#watchTimer.unref();
    }
  }

  get id(): string {
    return this.handle.id;
  }

  get exited(): VmExit | undefined {
    return this.#exit;
  }

  /** The agent's cgroup, when it has one. */
  get cgroup(): string | undefined {
    return this.#cgroup;
  }

  async pause(options: CallOptions = {}): Promise<void> {
    this.#check();
    if (this.#cgroup) {
      fs.writeFileSync(path.join(this.#cgroup, 'cgroup.freeze'), '1');
      await this.#until(() => cgroupEvent(this.#cgroup!, 'frozen'), 'the agent to freeze', options);
    } else {
      signalProcess(this.handle, 'SIGSTOP');
      await this.#until(() => this.#stopped(), 'the agent to stop', options);
    }
    this.emit('paused');
  }

  async resume(options: CallOptions = {}): Promise<void> {
    this.#check();
    this.#thaw();
    await this.#until(() => !(this.#cgroup ? cgroupEvent(this.#cgroup, 'frozen') : this.#stopped()), 'the agent to thaw', options);
    this.emit('resumed');
  }

  async status(_options: CallOptions = {}): Promise<string> {
    this.#check();
    if (!isAlive(this.handle)) return 'shutdown';
    return (this.#cgroup && cgroupEvent(this.#cgroup, 'frozen')) || this.#stopped() ? 'paused' : 'running';
  }

  /**
   * 1. The graceful step: the caller's (e.g. the agent's Shutdown request), else SIGTERM (the
   *    agent's power-off: it kills its containers and exits), for `gracefulTimeoutMs`;
   * 2. when the caller gave its own step: SIGTERM (`quit`), for a few seconds;
   * 3. SIGKILL to the whole cgroup (`kill`).
   */
  async shutdown(options: ShutdownOptions = {}): Promise<ShutdownResult> {
    if (this.#exit) return { exit: this.#exit, method: 'graceful' };
    this.#check();
    const graceful = new AbortController();
    const onAbort = (): void => graceful.abort(options.signal?.reason);
    options.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const step = options.graceful
        ? options.graceful(graceful.signal)
        : Promise.resolve().then(() => {
            this.#thaw();
            if (!signalProcess(this.handle, 'SIGTERM')) throw new Error('the agent is gone');
          });
      // A step that fails skips the rest of the wait.
      const failed = step.then(
        () => new Promise<never>(() => undefined),
        () => undefined,
      );
      const exit = await this.#exitWithin(options.gracefulTimeoutMs ?? 10_000, graceful.signal, failed);
      graceful.abort();
      if (exit) return { exit, method: 'graceful' };
      if (options.signal?.aborted) throw new AbortError('VM shutdown', { cause: options.signal.reason });
      if (options.graceful) {
        this.#expected = 'host-sigterm';
        this.#thaw();
        if (signalProcess(this.handle, 'SIGTERM')) {
          const quitExit = await this.#exitWithin(QUIT_MS, undefined);
          if (quitExit) return { exit: quitExit, method: 'quit' };
        }
      }
      return { exit: await this.kill(), method: 'kill' };
    } finally {
      options.signal?.removeEventListener('abort', onAbort);
    }
  }

  /** SIGKILL to the agent and everything it runs (its cgroup), as when a VM dies. */
  async kill(): Promise<VmExit> {
    if (this.#exit) return this.#exit;
    this.#expected ??= 'SIGKILL';
    if (this.#cgroup) killCgroup(this.#cgroup);
    signalProcess(this.handle, 'SIGKILL');
    await waitForProcessExit(this.handle, 10_000);
    this.#gone('SIGKILL', false);
    await this.#cgroupRemoved;
    return this.#exit ?? { reason: 'shutdown', detail: 'SIGKILL' };
  }

  waitForExit(signal?: AbortSignal): Promise<VmExit> {
    if (this.#exit) return Promise.resolve(this.#exit);
    return new Promise<VmExit>((resolve, reject) => {
      // The VM itself does not keep this process alive (it is detached); a waiter does.
      const keepAlive = setInterval(() => undefined, 1 << 30);
      const waiter = (exit: VmExit): void => {
        clearInterval(keepAlive);
        signal?.removeEventListener('abort', onAbort);
        resolve(exit);
      };
      const onAbort = (): void => {
        clearInterval(keepAlive);
        this.#exitWaiters.splice(this.#exitWaiters.indexOf(waiter) >>> 0, 1);
        reject(new AbortError('waiting for the VM to exit', { cause: signal?.reason }));
      };
      if (signal?.aborted) {
        onAbort();
        return;
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#exitWaiters.push(waiter);
    });
  }

  async hotplug(device: VmDevice, _options: CallOptions = {}): Promise<HotplugResult> {
    throw new StandInNoHotplugError(this.id, `plugging ${device.kind} device "${device.id}"`);
  }

  async unplug(id: string, _options: CallOptions = {}): Promise<void> {
    throw new StandInNoHotplugError(this.id, `unplugging device "${id}"`);
  }

  waitForConsole(pattern: RegExp | string, options: CallOptions = {}): Promise<string> {
    return waitForConsoleLine(this.handle.consoleLog, pattern, {
      signal: options.signal,
      timeoutMs: options.timeoutMs ?? 60_000,
      abortWhen: () => (this.#exit ? new VmExitedError(this.id, this.#exit.detail) : undefined),
    });
  }

  /** Stops watching the agent; it keeps running. */
  detach(): void {
    this.#detached = true;
    this.#unwatch();
  }

  #check(): void {
    if (this.#exit) throw new VmExitedError(this.id, this.#exit.detail);
    if (this.#detached) throw new InvalidStateError(`vm "${this.id}"`, 'detached', 'controlled');
  }

  #stopped(): boolean {
    const state = readProcStat(this.handle.pid)?.state;
    return state === 'T' || state === 't';
  }

  #thaw(): void {
    if (this.#cgroup) {
      try {
        fs.writeFileSync(path.join(this.#cgroup, 'cgroup.freeze'), '0');
      } catch {
        // the group is gone with the agent
      }
    } else {
      signalProcess(this.handle, 'SIGCONT');
    }
  }

  async #until(done: () => boolean, what: string, options: CallOptions): Promise<void> {
    const timeoutMs = options.timeoutMs ?? 10_000;
    const deadline = Date.now() + timeoutMs;
    while (!done()) {
      if (options.signal?.aborted) throw new AbortError(`waiting for ${what}`, { cause: options.signal.reason });
      if (!isAlive(this.handle)) throw new VmExitedError(this.id, 'the agent process is gone');
      if (Date.now() >= deadline) throw new TimeoutError(`waiting for ${what}`, timeoutMs);
      await sleep(2);
    }
  }

  /** The exit if the VM is gone within `ms`, else undefined (also when `giveUp` settles first). */
  async #exitWithin(ms: number, signal: AbortSignal | undefined, giveUp?: Promise<void>): Promise<VmExit | undefined> {
    if (this.#exit) return this.#exit;
    const controller = new AbortController();
    const onAbort = (): void => controller.abort();
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const exit = await Promise.race([
        this.waitForExit(controller.signal).catch(() => undefined),
        sleep(ms, undefined, { signal: controller.signal }).catch(() => undefined),
        ...(giveUp ? [giveUp] : []),
      ]);
      return exit ?? this.#exit;
    } finally {
      controller.abort();
      signal?.removeEventListener('abort', onAbort);
    }
  }

  #unwatch(): void {
    clearInterval(this.#watchTimer);
    this.#watchTimer = undefined;
    if (this.#child && this.#onChildExit) this.#child.off('exit', this.#onChildExit);
    this.#child = undefined;
    this.#onChildExit = undefined;
  }

  /**
   * Records the exit once, ends what the agent left in its cgroup, and tells everyone. A killed
   * agent's sockets stay (the sandbox removes the boot folder, a spawn replaces stale ones): they
   * are how a VM attached in another process tells a kill from the agent's own shutdown, which
   * removes them. That guess is the best an attached VM can make (QEMU's says it over QMP); a
   * VM spawned by this process knows from the exit status.
   */
  #gone(detail: string, clean: boolean): void {
    if (this.#exit) return;
    const exit: VmExit =
      this.#expected !== undefined ? { reason: 'shutdown', detail: this.#expected }
      : clean ? { reason: 'shutdown', detail: 'guest-shutdown' }
      : { reason: 'unexpected', detail };
    this.#exit = exit;
    this.#unwatch();
    if (this.#cgroup) {
      // The containers of an agent that was killed are host processes: they go as a VM's would.
      killCgroup(this.#cgroup);
      this.#cgroupRemoved = removeCgroup(this.#cgroup).catch(() => undefined);
    }
    for (const waiter of this.#exitWaiters.splice(0)) waiter(exit);
    this.emit('exit', exit);
  }
}
