/**
 * A fake hypervisor for tests of the sandbox core: no QEMU, no guest, no agent binary. Each "VM"
 * is a real detached host process (a tiny Node script: the pid + start time identity the sandbox
 * records, signals, exits and `isAlive` all work as with QEMU), and the guest agent is served in
 * this process, on the unix sockets of the agent's virtio-serial ports, by a scripted fake
 * (test/unit/agent-fake.ts over each connection). Every behaviour a silent or hostile guest or
 * hypervisor can have is a switch, set at construction or flipped on a live VM:
 *
 * ```ts
 * const fake = new FakeHypervisor({ agent: 'silent' });          // or flip later: fake.last.setAgent('garbage')
 * const sandbox = await Sandbox.create({ stateDir, ...fakeSandboxConfig(fake) });
 * ```
 *
 * How a boot maps onto the host:
 * - `spawn()` starts `node -e SCRIPT vmpod-fake-vm RUNDIR` detached (its own session, output on
 *   the sandbox's console log pipe, like QEMU's), then listens on every agent port socket (QEMU is
 *   the server of a virtio-serial chardev: the host connects to it). The command line names the
 *   boot folder, so the fixtures' leftover checks find a fake VM as they find QEMU.
 * - `ready()` waits until the script has its signal handlers (its "QMP is up"), then returns a
 *   {@link FakeVm}, the control channel.
 * - The VM process: SIGTERM makes it print a power-off line and exit 0 (the guest powered off, or
 *   QEMU quit); SIGUSR2 makes it print a kernel panic and exit 1 (a crash: {@link FakeMachine.crash}
 *   first ends the agent's connections, as QEMU closes its chardevs before it exits); SIGKILL kills it.
 *   When it dies, the fake closes the agent's listening sockets and connections, then reports the
 *   exit to the control channels: the order in which a dying QEMU's peers learn of it (the kernel
 *   closes its fds, the chardev sockets among them, before SIGCHLD tells its parent). The fake
 *   sees the death first through a pipe whose write end only the VM process holds.
 *   (`exitOrder: 'exit-first'` reverses that, to see what the sandbox does when it hears of the
 *   exit first.)
 * - The agent (mode `normal`) answers Hello, SetTime, Mount, Unmount, Ping, ListContainers,
 *   SetNetworkConfig and Shutdown (then the VM powers off); any other method gets UNIMPLEMENTED.
 *   While the VM is paused, requests wait for the resume (its vCPUs are frozen).
 *
 * Scripted behaviours:
 * - agent ({@link AgentMode}): `normal`; `silent` (accepts connections, never answers);
 *   `garbage` (answers every request with an invalid frame; flipped on, it sends one at once on
 *   every open connection); `hang-up` (closes connections: the open ones at once when flipped on,
 *   new ones as they come).
 * - `powerOffOnShutdown: false`: the agent acknowledges Shutdown but the guest never powers off.
 * - control channel ({@link ControlMode}: `attach`, `ready`, pause/resume/status, the powerdown
 *   and quit of shutdown): `normal`, `silent` (never answers: calls end at their deadline, as QMP
 *   calls do), `failing` (answers with errors at once).
 * - `spawn: 'throws'`: `spawn()` fails before anything is made.
 * - `exitDuringStart`: the VM crashes (exit code 1) before its control channel is up
 *   (`before-ready`), or when the agent receives its first Hello (`at-hello`).
 *
 * The VMs live in this process: {@link FakeHypervisor.attach} finds a VM by its handle among those
 * any FakeHypervisor of this process spawned (a new `Sandbox.attach` with a new FakeHypervisor
 * works); other processes cannot attach. {@link killFakeVms} ends whatever is left (afterEach).
 *
 * @module
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { EventEmitter } from 'eventemitter3';
import { AbortError, InvalidArgumentError, InvalidStateError, TimeoutError, VmpodError } from '../../src/errors.js';
import { waitForConsoleLine } from '../../src/hypervisor/console.js';
import { QmpError, VmExitedError, VmStartError } from '../../src/hypervisor/errors.js';
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
import { isAlive, logTail, signalProcess, spawnDetached, terminate, waitForProcessExit, type DetachedProcess, type ProcessIdentity } from '../../src/host/process.js';
import { native } from '../../src/native.js';
import type { SandboxConfig } from '../../src/sandbox/config.js';
import { FakeAgent, VALID_INFO, type FakeRequest } from '../unit/agent-fake.js';

/** The hypervisor name in handles. */
export const FAKE = 'fake';
/** The virtio-fs tag of the sandbox's share (src/sandbox/resources/shared-fs.ts). */
const SHARE_TAG = 'vmpod';
/** Default deadline of a control-channel call without one (QMP's). */
const CONTROL_DEFAULT_MS = 10_000;

/** How the fake agent behaves. */
export type AgentMode = 'normal' | 'silent' | 'garbage' | 'hang-up';
/** How the fake control channel (QEMU's QMP) behaves. */
export type ControlMode = 'normal' | 'silent' | 'failing';

/** Options (the script) of a {@link FakeHypervisor}; each VM it spawns starts with them. */
export interface FakeHypervisorOptions {
  /** The agent's behaviour from the first connection on (default `normal`). */
  agent?: AgentMode;
  /** The control channel's behaviour, `ready()` included (default `normal`). */
  control?: ControlMode;
  /** `throws`: `spawn()` fails (with a VmStartError) before it makes anything. */
  spawn?: 'ok' | 'throws';
  /** The VM crashes (exit code 1) before `ready()` resolves, or when the first Hello arrives. */
  exitDuringStart?: 'before-ready' | 'at-hello';
  /** The guest powers off after acknowledging Shutdown (default true). */
  powerOffOnShutdown?: boolean;
  /** What `quit` waits for an answer, then for the exit (QEMU: 5 s each; default 1 s). */
  quitTimeoutMs?: number;
  /** `ready()` deadline without a `timeoutMs` of its own (default 10 s). */
  startTimeoutMs?: number;
  /**
   * When the VM dies, what this process learns first. `sockets-first` (default): its agent
   * connections end, then its exit is known, the order a dying process's peers see (the kernel
   * closes its fds before it notifies its parent). `exit-first`: the exit is known, then the
   * connections end (no real VM does that: it shows what the sandbox does when it hears of the
   * exit first).
   */
  exitOrder?: 'sockets-first' | 'exit-first';
}

/** A request the fake agent received. */
export interface ReceivedRequest {
  /** Index of the agent port it came on. */
  port: number;
  method: string;
  params: Record<string, unknown>;
}

/** Bytes no agent sends: a frame of type 9 (the client must drop the connection with a protocol error). */
export const GARBAGE = Buffer.from([0, 0, 0, 4, 0, 0, 0, 1, 9, 0, 0xde, 0xad, 0xbe, 0xef]);

/** The VM process: a Node script that "boots", powers off on SIGTERM, panics on SIGUSR2. */
const VM_SCRIPT = [
  "process.on('SIGTERM', () => { process.stdout.write('fake-vm: reboot: Power down\\n'); process.exit(0); });",
  "process.on('SIGUSR2', () => { process.stdout.write('fake-vm: Kernel panic - not syncing: on purpose\\n'); process.exit(1); });",
  "process.stdout.write('fake-vm: booted ' + process.argv[2] + '\\n');",
  'setInterval(() => {}, 1 << 30);',
].join('\n');
/** argv[1] of every fake VM process, for finding them. */
export const FAKE_VM_ARGV = 'vmpod-fake-vm';

/** True once `pid` catches SIGTERM and SIGUSR2 (SigCgt of /proc/PID/status): the script runs. */
function handlersInstalled(pid: number): boolean {
  let status: string;
  try {
    status = fs.readFileSync(`/proc/${pid}/status`, 'latin1');
  } catch {
    return false;
  }
  const mask = BigInt(`0x${/^SigCgt:\s*([0-9a-f]+)$/mu.exec(status)?.[1] ?? '0'}`);
  const bit = (signal: number): bigint => 1n << BigInt(signal - 1);
  return (mask & bit(os.constants.signals.SIGTERM)) !== 0n && (mask & bit(os.constants.signals.SIGUSR2)) !== 0n;
}

/** True while a flock is held on one of `files` (by inode in /proc/locks; nothing is locked here). */
function flocked(files: readonly string[]): boolean {
  const inodes = files.map((f) => fs.statSync(f, { throwIfNoEntry: false })?.ino).filter((i) => i !== undefined);
  if (inodes.length === 0) return false;
  const held = fs
    .readFileSync('/proc/locks', 'latin1')
    .split('\n')
    .filter((line) => line.includes(' FLOCK '))
    .map((line) => Number(/:(\d+) /u.exec(line)?.[1]));
  return inodes.some((inode) => held.includes(inode));
}

// --- Placeholder files ------------------------------------------------------------------------------------

let files: { dir: string; kernel: string; initramfs: string } | undefined;

/** Empty placeholders for `guest.kernel` and `guest.initramfs` (nothing boots them), made once per process. */
export function fakeGuestFiles(): { dir: string; kernel: string; initramfs: string } {
  if (files && fs.existsSync(files.kernel)) return files;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-fake-vm-'));
  files = { dir, kernel: path.join(dir, 'kernel'), initramfs: path.join(dir, 'initramfs') };
  fs.writeFileSync(files.kernel, '');
  fs.writeFileSync(files.initramfs, '');
  return files;
}

/** The parts of a sandbox config that make it run on `fake`. */
export function fakeSandboxConfig(fake: FakeHypervisor): { hypervisor: FakeHypervisor; streamPorts: 0; guest: NonNullable<SandboxConfig['guest']> } {
  const { kernel, initramfs } = fakeGuestFiles();
  return { hypervisor: fake, streamPorts: 0, guest: { kernel, initramfs, build: 'never' } };
}

// --- The VMs of this process ------------------------------------------------------------------------------

const machines = new Map<string, FakeMachine>();
const keyOf = (identity: ProcessIdentity): string => `${identity.pid}.${identity.startTime}`;

/** Every fake VM this process spawned (alive or not). */
export function fakeMachines(): FakeMachine[] {
  return [...machines.values()];
}

/**
 * SIGKILLs every fake VM of this process that still runs and closes its sockets; forgets the
 * dead ones. Resolves with how many were still running.
 */
export async function killFakeVms(): Promise<number> {
  let killed = 0;
  for (const machine of machines.values()) {
    if (machine.alive) {
      killed++;
      machine.signal('SIGKILL');
      await machine.gone(10_000);
    }
    machine.closeTransport();
    machines.delete(keyOf(machine.handle));
  }
  return killed;
}

/** Removes the placeholder files (afterAll). */
export function cleanupFakeFiles(): void {
  if (files) fs.rmSync(files.dir, { recursive: true, force: true });
  files = undefined;
}

process.once('exit', () => {
  for (const machine of machines.values()) if (machine.alive) machine.signal('SIGKILL');
  if (files) fs.rmSync(files.dir, { recursive: true, force: true });
});

/** What a VM config asks of the fake: the agent's port sockets (the share is ignored: nobody connects to virtiofsd). */
function portsOf(config: VmConfig): string[] {
  let ports: string[] | undefined;
  (config.devices ?? []).forEach((device: VmDevice, i) => {
    const refuse = (why: string): never => {
      throw new InvalidArgumentError(`config.devices[${i}]`, `the fake hypervisor cannot provide ${device.kind} device "${device.id}": ${why}`);
    };
    if (device.kind === 'virtio-serial') {
      if (device.id !== 'agent') refuse('it serves only the agent\'s ports (give the sandbox streamPorts: 0)');
      if (ports) refuse('the agent\'s ports are given twice');
      ports = device.ports.map((p) => p.socket);
    } else if (device.kind === 'vhost-user-fs') {
      if (device.tag !== SHARE_TAG) refuse(`only the sandbox's share (tag "${SHARE_TAG}") is accepted`);
    } else {
      refuse('it has no such devices');
    }
  });
  if (!ports || ports.length === 0) throw new InvalidArgumentError('config.devices', 'the fake hypervisor needs the agent\'s virtio-serial ports (a device with id "agent")');
  return ports;
}

interface Connection {
  readonly port: number;
  readonly socket: net.Socket;
  readonly agent: FakeAgent;
}

interface MachineEvents {
  exit: (exit: VmExit) => void;
  paused: () => void;
  resumed: () => void;
}

/**
 * One fake VM: its process, the agent served on its port sockets, its scripted behaviours (change
 * them at any time) and what it saw. Tests reach it as `fake.last` or `fake.machines[i]`.
 */
export class FakeMachine extends EventEmitter<MachineEvents> {
  readonly handle: VmHandle;
  readonly ports: readonly string[];
  /** Every request the agent received, answered or not, in order. */
  readonly requests: ReceivedRequest[] = [];
  /** Every control-channel command, in order (`attach`, `stop`, `cont`, `query-status`, `system_powerdown`, `quit`). */
  readonly controlCommands: string[] = [];
  /** Connections the agent accepted, in total. */
  connections = 0;
  agentMode: AgentMode;
  control: ControlMode;
  powerOffOnShutdown: boolean;
  readonly quitTimeoutMs: number;
  /** True once {@link FakeHypervisor.kill} (the sandbox's kill from its record) found it running and killed it. */
  killedFromRecord = false;
  #exit: VmExit | undefined;
  /** Why the VM is expected to go (a power-off the agent was asked for, a quit, a kill). */
  #expected: string | undefined;
  #exitAtHello: boolean;
  readonly #exitOrder: 'sockets-first' | 'exit-first';
  #paused = false;
  #held: (() => void)[] = [];
  readonly #servers: net.Server[] = [];
  readonly #open = new Set<Connection>();
  #transportClosed = false;
  readonly #exited: Promise<VmExit>;

  /** @internal */
  constructor(handle: VmHandle, proc: DetachedProcess, deathPipe: number, ports: readonly string[], options: FakeHypervisorOptions) {
    super();
    this.handle = handle;
    this.ports = ports;
    this.agentMode = options.agent ?? 'normal';
    this.control = options.control ?? 'normal';
    this.powerOffOnShutdown = options.powerOffOnShutdown ?? true;
    this.quitTimeoutMs = options.quitTimeoutMs ?? 1000;
    this.#exitAtHello = options.exitDuringStart === 'at-hello';
    this.#exitOrder = options.exitOrder ?? 'sockets-first';
    this.#exited = new Promise((resolve) => {
      proc.child.once('exit', (code, signal) => {
        const exit: VmExit =
          this.#expected !== undefined ? { reason: 'shutdown', detail: this.#expected }
          : code === 0 ? { reason: 'shutdown', detail: 'host-signal' } // a SIGTERM nobody of ours sent
          : { reason: 'unexpected', detail: signal ?? `exit code ${code ?? 'unknown'}` };
        this.#exit = exit;
        resolve(exit);
        if (this.#exitOrder === 'exit-first') {
          this.emit('exit', exit);
          setImmediate(() => this.closeTransport());
        } else {
          // The sockets are closed (on the death pipe's end, or now); their peers in this process
          // see their end at the next poll of the event loop, and only then is the exit told (two
          // turns of the loop later): the order in which a dying QEMU's peers learn of it.
          this.closeTransport();
          setImmediate(() => setImmediate(() => this.emit('exit', exit)));
        }
      });
    });
    // The VM's end as its peers see it: every fd it held is closed by the kernel before its parent
    // is told it exited, so the agent's connections end first (the order a QEMU's death has).
    const death = new net.Socket({ fd: deathPipe, readable: true, writable: false });
    death.on('error', () => undefined);
    death.on('close', () => {
      if (this.#exitOrder === 'sockets-first') this.closeTransport();
    });
    death.resume();
    death.unref();
    machines.set(keyOf(handle), this);
  }

  /** The process identity (pid + start time) the sandbox records. */
  get identity(): ProcessIdentity {
    return { pid: this.handle.pid, startTime: this.handle.startTime };
  }

  get alive(): boolean {
    return isAlive(this.handle);
  }

  /** How the VM ended, once it has. */
  get exit(): VmExit | undefined {
    return this.#exit;
  }

  get paused(): boolean {
    return this.#paused;
  }

  /** Methods the agent received, in order. */
  get methods(): string[] {
    return this.requests.map((r) => r.method);
  }

  /** Resolves with the exit once the process is gone and its exit handled; undefined after `ms`. */
  async gone(ms: number): Promise<VmExit | undefined> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([this.#exited, new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), ms)))]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Sends `signal` to the VM process (if it is still the one recorded). */
  signal(signal: NodeJS.Signals): boolean {
    return signalProcess(this.handle, signal);
  }

  /** The guest powers off (QEMU exits 0 after a SHUTDOWN event `guest-shutdown`). */
  powerOff(): void {
    this.#expected ??= 'guest-shutdown';
    this.signal('SIGTERM');
  }

  /**
   * The guest crashes: the VM process prints a kernel panic and exits with code 1. As QEMU does
   * (it closes its chardevs while it cleans up, then tears down and exits), the agent's
   * connections end first, and the process exits once the host side has let go of them (no
   * port lock file held any more, at most `lingerMs`); with `exitOrder: 'exit-first'` it exits at once.
   */
  crash(lingerMs = 2000): void {
    if (this.#exitOrder === 'exit-first') return void this.signal('SIGUSR2');
    this.closeTransport();
    void this.#peersLetGo(lingerMs).then(() => this.signal('SIGUSR2'));
  }

  /** Waits (at most `ms`) until no process holds the flock of one of this VM's agent port lock files (read from /proc/locks). */
  async #peersLetGo(ms: number): Promise<void> {
    const deadline = Date.now() + ms;
    const locks = this.ports.map((socket) => socket.replace(/\.sock$/u, '.lock'));
    while (Date.now() < deadline && flocked(locks)) await sleep(1);
  }

  /** @internal What the control channel was told to do (`host-qmp-quit`, `SIGKILL`). */
  expect(detail: string): void {
    this.#expected ??= detail;
  }

  /** Changes the agent's behaviour; `garbage` and `hang-up` act on the open connections at once. */
  setAgent(mode: AgentMode): void {
    this.agentMode = mode;
    for (const c of this.#open) {
      if (mode === 'garbage') c.agent.send(GARBAGE);
      if (mode === 'hang-up') c.socket.destroy();
    }
  }

  /** Changes the control channel's behaviour (calls already waiting keep theirs). */
  setControl(mode: ControlMode): void {
    this.control = mode;
  }

  /** @internal vCPUs frozen: the agent's answers wait. */
  pause(): void {
    this.#paused = true;
    this.emit('paused');
  }

  /** @internal vCPUs thawed: the agent answers what waited. */
  resume(): void {
    this.#paused = false;
    this.emit('resumed');
    for (const answer of this.#held.splice(0)) answer();
  }

  /** @internal Listens on every agent port socket (the hypervisor side of the chardevs). */
  async listen(): Promise<void> {
    for (const [port, socketPath] of this.ports.entries()) {
      if (fs.lstatSync(socketPath, { throwIfNoEntry: false })?.isSocket()) fs.unlinkSync(socketPath);
      const server = net.createServer((socket) => this.#accept(port, socket));
      this.#servers.push(server);
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(socketPath, () => {
          server.off('error', reject);
          resolve();
        });
      });
      server.on('error', () => undefined);
    }
  }

  /** Closes the listening sockets and every connection, and removes the socket files (the VM is gone). */
  closeTransport(): void {
    if (this.#transportClosed) return;
    this.#transportClosed = true;
    this.#held = [];
    for (const server of this.#servers) server.close();
    for (const c of this.#open) c.socket.destroy();
    this.#open.clear();
    for (const socketPath of this.ports) fs.rmSync(socketPath, { force: true });
  }

  #accept(port: number, socket: net.Socket): void {
    socket.on('error', () => undefined);
    if (this.#transportClosed) return void socket.destroy();
    this.connections++;
    const agent = new FakeAgent({ answerHello: false });
    const connection: Connection = { port, socket, agent };
    this.#open.add(connection);
    agent.transport.on('error', () => undefined);
    agent.transport.on('data', (bytes: Buffer) => {
      if (!socket.destroyed) socket.write(bytes);
    });
    socket.on('data', (chunk: Buffer) => {
      if (!agent.transport.destroyed) agent.transport.write(chunk);
    });
    socket.on('close', () => {
      this.#open.delete(connection);
      agent.transport.destroy();
    });
    agent.onRequest = (request) => this.#onRequest(connection, request);
    if (this.agentMode === 'hang-up') socket.destroy();
  }

  #onRequest(c: Connection, request: FakeRequest): void {
    this.requests.push({ port: c.port, method: request.method, params: request.params });
    if (this.#exitAtHello && request.method === 'Hello') {
      this.#exitAtHello = false;
      this.crash();
      return;
    }
    const answer = (): void => {
      if (c.socket.destroyed) return;
      switch (this.agentMode) {
        case 'silent':
          return;
        case 'garbage':
          return c.agent.send(GARBAGE);
        case 'hang-up':
          return void c.socket.destroy();
        case 'normal':
          return this.#answer(c, request);
      }
    };
    if (this.#paused) this.#held.push(answer);
    else answer();
  }

  /** What a well-behaved agent answers. */
  #answer(c: Connection, { stream, method, params }: FakeRequest): void {
    switch (method) {
      case 'Hello':
        return c.agent.respond(stream, { ...VALID_INFO, agent: 'vmpod-agent/fake', features: ['containers', 'mount', 'set-time'] });
      case 'Ping':
      case 'Unmount':
        return c.agent.respond(stream, {});
      case 'SetTime':
        return c.agent.respond(stream, { applied: true, offsetNs: 0 });
      case 'Mount':
        return c.agent.respond(stream, { target: params['target'], device: null });
      case 'ListContainers':
        return c.agent.respond(stream, { containers: [] });
      case 'SetNetworkConfig':
        return c.agent.respond(stream, { hostnameApplied: true });
      case 'Shutdown':
        c.agent.respond(stream, {});
        if (this.powerOffOnShutdown) setTimeout(() => this.powerOff(), 10);
        return;
      default:
        return c.agent.respondError(stream, 'UNIMPLEMENTED', `the fake agent does not implement ${method}`);
    }
  }
}

// --- The hypervisor ------------------------------------------------------------------------------------------

/** The fake has no hotplug. */
export class FakeNoHotplugError extends VmpodError {
  constructor(readonly vmId: string, what: string) {
    super('ERR_VMPOD_FAKE_NO_HOTPLUG', `vm "${vmId}": the fake hypervisor has no hotplug (${what})`);
  }
}

/** A fake VM just spawned: its handle, and the wait for its control channel. */
export interface SpawnedFakeVm extends SpawnedVm {
  ready(options?: CallOptions): Promise<FakeVm>;
}

/** A fake VM backend (see the module comment). Its options are its script; change them between starts. */
export class FakeHypervisor implements Hypervisor {
  readonly name = FAKE;
  /** The VMs this instance spawned, in order. */
  readonly machines: FakeMachine[] = [];
  /** Handles {@link kill} was called with (the sandbox's kills from its record), in order. */
  readonly kills: VmHandle[] = [];
  options: FakeHypervisorOptions;

  constructor(options: FakeHypervisorOptions = {}) {
    this.options = { ...options };
  }

  /** The VM spawned last. */
  get last(): FakeMachine {
    const machine = this.machines.at(-1);
    if (!machine) throw new Error('the fake hypervisor has spawned no VM yet');
    return machine;
  }

  async start(config: VmConfig, options: CallOptions = {}): Promise<FakeVm> {
    return (await this.spawn(config, options)).ready(options);
  }

  async spawn(config: VmConfig, options: CallOptions = {}): Promise<SpawnedFakeVm> {
    const script = { ...this.options };
    const ports = portsOf(config);
    if (!fs.statSync(config.runDir, { throwIfNoEntry: false })?.isDirectory()) throw new InvalidArgumentError('runDir', `${config.runDir} is not a directory`);
    if (options.signal?.aborted) throw new AbortError('VM start', { cause: options.signal.reason });
    if (script.spawn === 'throws') throw new VmStartError(config.id, 'the fake hypervisor fails to spawn on purpose', '');

    // The VM holds the write end of a pipe (its fd 3): the kernel closes it when the VM dies, before
    // this process hears of the exit (SIGCHLD), exactly as it closes QEMU's chardev sockets.
    const [deathRead, deathWrite] = native().pipe();
    let proc: DetachedProcess;
    try {
      proc = await spawnDetached(process.execPath, ['-e', VM_SCRIPT, FAKE_VM_ARGV, config.runDir], { output: config.output ?? { file: config.consoleLog }, fds: [deathWrite] });
    } catch (error) {
      native().closeFd(deathRead);
      throw error;
    } finally {
      native().closeFd(deathWrite);
    }
    const handle: VmHandle = {
      hypervisor: FAKE,
      id: config.id,
      pid: proc.pid,
      startTime: proc.startTime,
      machine: config.machine ?? 'q35',
      controlSockets: [],
      consoleLog: config.consoleLog,
      sockets: ports,
    };
    const machine = new FakeMachine(handle, proc, deathRead, ports, script);
    this.machines.push(machine);
    try {
      await machine.listen();
    } catch (error) {
      machine.signal('SIGKILL');
      await machine.gone(10_000);
      machine.closeTransport();
      throw new VmStartError(config.id, `cannot listen on the agent's sockets: ${(error as Error).message}`, '', { cause: error });
    }
    const defaultTimeout = script.startTimeoutMs ?? 10_000;
    return {
      handle,
      ready: async (ready: CallOptions = {}): Promise<FakeVm> => {
        const timeoutMs = ready.timeoutMs ?? defaultTimeout;
        const deadline = Date.now() + timeoutMs;
        const fail = async (error: Error): Promise<never> => {
          machine.signal('SIGKILL');
          await machine.gone(10_000);
          machine.closeTransport();
          throw error;
        };
        let crashed = false;
        for (;;) {
          if (machine.exit || !machine.alive) {
            const exit = machine.exit ?? (await machine.gone(1000));
            return fail(new VmStartError(config.id, `the VM exited during start (${exit?.detail ?? 'gone'})`, logTail(config.consoleLog)));
          }
          if (ready.signal?.aborted) return fail(new AbortError('VM start', { cause: ready.signal.reason }));
          if (handlersInstalled(handle.pid)) {
            if (script.exitDuringStart === 'before-ready') {
              if (!crashed) machine.crash();
              crashed = true;
            } else if (machine.control === 'failing') {
              return fail(new VmStartError(config.id, 'the control channel failed (on purpose)', '', { cause: new QmpError('qmp_capabilities', 'GenericError', 'fake failure') }));
            } else if (machine.control === 'normal') {
              return new FakeVm(machine);
            }
          }
          if (Date.now() >= deadline) return fail(new VmStartError(config.id, `the control channel did not come up within ${timeoutMs} ms`, logTail(config.consoleLog)));
          await sleep(5);
        }
      },
    };
  }

  /** Takes control of a VM that a FakeHypervisor of this process spawned. */
  async attach(handle: VmHandle, options: CallOptions = {}): Promise<FakeVm> {
    if (handle.hypervisor !== FAKE) throw new InvalidArgumentError('handle.hypervisor', `is "${handle.hypervisor}", not "${FAKE}"`);
    if (options.signal?.aborted) throw new AbortError('VM attach', { cause: options.signal.reason });
    if (!isAlive(handle)) throw new VmExitedError(handle.id, `process ${handle.pid} is gone`);
    const machine = machines.get(keyOf(handle));
    if (!machine) throw new InvalidArgumentError('handle', `process ${handle.pid} is not a VM of this process's fake hypervisor`);
    machine.controlCommands.push('attach');
    if (machine.control === 'failing') {
      throw new VmStartError(handle.id, 'no control channel answered (all broken)', '', { cause: new QmpError('qmp_capabilities', 'GenericError', 'fake failure') });
    }
    if (machine.control === 'silent') {
      const timeoutMs = options.timeoutMs ?? CONTROL_DEFAULT_MS;
      await silence(machine, `QMP greeting`, { timeoutMs, signal: options.signal }).catch((error: unknown) => {
        if (error instanceof TimeoutError) throw new VmStartError(handle.id, 'no control channel answered (all busy or broken)', '', { cause: error });
        throw error;
      });
    }
    return new FakeVm(machine);
  }

  /** SIGKILL from the handle alone (no control channel), like QEMU's; rejects if the VM survived. */
  async kill(handle: VmHandle): Promise<void> {
    this.kills.push(handle);
    const machine = machines.get(keyOf(handle));
    if (!isAlive(handle)) return;
    if (machine) machine.killedFromRecord = true;
    if (!(await terminate(handle, 0))) throw new VmExitedError(handle.id, `the fake VM (pid ${handle.pid}) did not die from SIGKILL`);
    await machine?.gone(10_000); // its sockets closed too
  }
}

/** Waits as a call on a silent control channel does: rejects at its deadline, on abort, or when the VM exits. */
function silence(machine: FakeMachine, what: string, options: CallOptions): Promise<never> {
  const timeoutMs = options.timeoutMs ?? CONTROL_DEFAULT_MS;
  return new Promise<never>((_, reject) => {
    const done = (error: Error): void => {
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
      machine.off('exit', onExit);
      reject(error);
    };
    const timer = setTimeout(() => done(new TimeoutError(what, timeoutMs)), timeoutMs);
    const onAbort = (): void => done(new AbortError(what, { cause: options.signal?.reason }));
    const onExit = (exit: VmExit): void => done(new VmExitedError(machine.handle.id, exit.detail));
    if (options.signal?.aborted) return onAbort();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    machine.once('exit', onExit);
  });
}

// --- The control channel ----------------------------------------------------------------------------------------

/** A control connection to a fake VM (what QemuVm is to QEMU). */
export class FakeVm extends EventEmitter<VmEvents> implements VirtualMachine {
  readonly handle: VmHandle;
  readonly machine: FakeMachine;
  #exit: VmExit | undefined;
  #detached = false;
  readonly #waiters: ((exit: VmExit) => void)[] = [];
  readonly #onExit = (exit: VmExit): void => this.#gone(exit);
  readonly #onPaused = (): void => void this.emit('paused');
  readonly #onResumed = (): void => void this.emit('resumed');

  /** @internal */
  constructor(machine: FakeMachine) {
    super();
    this.machine = machine;
    this.handle = machine.handle;
    const already = machine.exit;
    if (already) setImmediate(() => this.#gone(already));
    else machine.on('exit', this.#onExit);
    machine.on('paused', this.#onPaused);
    machine.on('resumed', this.#onResumed);
  }

  get id(): string {
    return this.handle.id;
  }

  get exited(): VmExit | undefined {
    return this.#exit;
  }

  async pause(options: CallOptions = {}): Promise<void> {
    await this.#command('stop', options, () => this.machine.pause());
  }

  async resume(options: CallOptions = {}): Promise<void> {
    await this.#command('cont', options, () => this.machine.resume());
  }

  async status(options: CallOptions = {}): Promise<string> {
    return this.#command('query-status', options, () => (this.machine.paused ? 'paused' : 'running'));
  }

  /** The graceful step (the caller's, else a power button press), then quit, then SIGKILL: like QemuVm's. */
  async shutdown(options: ShutdownOptions = {}): Promise<ShutdownResult> {
    if (this.#exit) return { exit: this.#exit, method: 'graceful' };
    const graceful = new AbortController();
    const onAbort = (): void => graceful.abort(options.signal?.reason);
    options.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const step = options.graceful
        ? options.graceful(graceful.signal)
        : this.#command('system_powerdown', { signal: graceful.signal }, () => this.machine.powerOff());
      const failed = step.then(
        () => new Promise<never>(() => undefined),
        () => undefined,
      );
      const exit = await this.#exitWithin(options.gracefulTimeoutMs ?? 10_000, graceful.signal, failed);
      graceful.abort();
      if (exit) return { exit, method: 'graceful' };
      if (options.signal?.aborted) throw new AbortError('VM shutdown', { cause: options.signal.reason });
      this.machine.expect('host-qmp-quit');
      const wait = this.machine.quitTimeoutMs;
      const answered = await this.#command('quit', { timeoutMs: wait }, () => this.machine.signal('SIGTERM')).then(
        () => true,
        (error: unknown) => !(error instanceof TimeoutError),
      );
      const quitExit = answered ? await this.#exitWithin(wait, undefined) : undefined;
      if (quitExit) return { exit: quitExit, method: 'quit' };
      return { exit: await this.kill(), method: 'kill' };
    } finally {
      options.signal?.removeEventListener('abort', onAbort);
    }
  }

  /** SIGKILL through the pid (no control channel needed). */
  async kill(): Promise<VmExit> {
    if (this.#exit) return this.#exit;
    this.machine.expect('SIGKILL');
    this.machine.signal('SIGKILL');
    await waitForProcessExit(this.handle, 10_000);
    const exit = await this.machine.gone(10_000);
    if (exit) this.#gone(exit);
    return this.#exit ?? exit ?? { reason: 'shutdown', detail: 'SIGKILL' };
  }

  waitForExit(signal?: AbortSignal): Promise<VmExit> {
    if (this.#exit) return Promise.resolve(this.#exit);
    return new Promise<VmExit>((resolve, reject) => {
      const keepAlive = setInterval(() => undefined, 1 << 30);
      const waiter = (exit: VmExit): void => {
        clearInterval(keepAlive);
        signal?.removeEventListener('abort', onAbort);
        resolve(exit);
      };
      const onAbort = (): void => {
        clearInterval(keepAlive);
        this.#waiters.splice(this.#waiters.indexOf(waiter) >>> 0, 1);
        reject(new AbortError('waiting for the VM to exit', { cause: signal?.reason }));
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#waiters.push(waiter);
    });
  }

  async hotplug(device: VmDevice, _options: CallOptions = {}): Promise<HotplugResult> {
    throw new FakeNoHotplugError(this.id, `plugging ${device.kind} device "${device.id}"`);
  }

  async unplug(id: string, _options: CallOptions = {}): Promise<void> {
    throw new FakeNoHotplugError(this.id, `unplugging device "${id}"`);
  }

  waitForConsole(pattern: RegExp | string, options: CallOptions = {}): Promise<string> {
    return waitForConsoleLine(this.handle.consoleLog, pattern, {
      signal: options.signal,
      timeoutMs: options.timeoutMs ?? 60_000,
      abortWhen: () => (this.#exit ? new VmExitedError(this.id, this.#exit.detail) : undefined),
    });
  }

  /** Closes this control connection: no more events; the VM runs on. */
  detach(): void {
    this.#detached = true;
    this.#unlisten();
  }

  /** One control command: answered, refused or never answered, as the machine's control mode says. */
  async #command<T>(command: string, options: CallOptions, run: () => T): Promise<T> {
    if (this.#exit) throw new VmExitedError(this.id, this.#exit.detail);
    if (this.#detached) throw new InvalidStateError(`vm "${this.id}"`, 'detached', 'controlled');
    this.machine.controlCommands.push(command);
    if (this.machine.control === 'failing') throw new QmpError(command, 'GenericError', 'the fake control channel fails on purpose');
    if (this.machine.control === 'silent') await silence(this.machine, `QMP ${command}`, options);
    if (options.signal?.aborted) throw new AbortError(`QMP ${command}`, { cause: options.signal.reason });
    return run();
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

  #unlisten(): void {
    this.machine.off('exit', this.#onExit);
    this.machine.off('paused', this.#onPaused);
    this.machine.off('resumed', this.#onResumed);
  }

  #gone(exit: VmExit): void {
    if (this.#exit) return;
    this.#exit = exit;
    this.#unlisten();
    for (const waiter of this.#waiters.splice(0)) waiter(exit);
    this.emit('exit', exit);
  }
}
