/**
 * {@link AgentClient}: the host side of the guest agent protocol (docs/agent-protocol.md) over
 * any connected byte stream: a `net.Socket` on the unix socket QEMU binds to a virtio-serial
 * port, a vsock socket, or a socket to an agent run on the host with `--listen unix:PATH`.
 *
 * @module
 */
import net from 'node:net';
import os from 'node:os';
import type { Duplex } from 'node:stream';
import { EventEmitter } from 'eventemitter3';
import { AbortError, InvalidArgumentError, TimeoutError } from '../errors.js';
import * as validate from '../validate.js';
import { AgentClosedError, AgentError, AgentProtocolError } from './errors.js';
import { FLAG_CLOSE, FLAG_WINDOW, FrameDecoder, FrameType, INITIAL_WINDOW, MAX_PAYLOAD, encodeFrame, type Frame } from './framing.js';
import {
  PROTOCOL_VERSION,
  agentInfoSchema,
  containerListSchema,
  emptySchema,
  errorSchema,
  exitStatusSchema,
  mountResultSchema,
  guestDeviceSchema,
  type FindDeviceRequest,
  type GuestDevice,
  pidSchema,
  setTimeSchema,
  statsSchema,
  type AgentInfo,
  type ContainerInfo,
  type ContainerStats,
  type CreateContainerRequest,
  type DirectStdioRequest,
  type ExecRequest,
  type ExitStatus,
  type MountRequest,
  type MountResult,
} from './messages.js';
import {
  configuredInterfaceSchema,
  guestNetworkSchema,
  networkConfigSchema,
  removeInterfaceSchema,
  type ConfigureInterfaceRequest,
  type ConfiguredInterface,
  type GuestNetworkInfo,
  type NetworkConfigRequest,
} from './network.js';
import { checkResources, type ContainerResources } from './resources.js';
import type { Schema } from './schema.js';
import { StdioReadable, StdioWritable, type ProcessStdio, type StdioEndpoint, type StdioLink } from './stdio.js';

/** Options of every call. */
export interface CallOptions {
  /** Cancels the wait for the answer (the request itself may still take effect in the guest). */
  signal?: AbortSignal | undefined;
  /**
   * Gives up after this many milliseconds with a {@link TimeoutError}. Without it a call has the
   * connection's deadline ({@link ConnectOptions.callTimeoutMs}), except {@link AgentClient.wait}.
   */
  timeoutMs?: number | undefined;
}

/** Options of {@link AgentClient.connect}. */
export interface ConnectOptions {
  signal?: AbortSignal | undefined;
  /** Handshake (Hello) timeout (default 30000 ms); calls afterwards have {@link ConnectOptions.callTimeoutMs}. */
  timeoutMs?: number | undefined;
  /** Sent to the agent in Hello, for its logs. */
  clientName?: string | undefined;
  /**
   * Deadline of every call that sets no `timeoutMs` of its own (default 30000 ms): a guest that
   * never answers cannot hold a caller forever. Calls that make the agent wait for something
   * (`mount`, `findDevice`, `configureInterface` with their request's `timeoutMs`) get that wait
   * on top. {@link AgentClient.wait} has no default deadline: a process may run for ever.
   */
  callTimeoutMs?: number | undefined;
}

/** Default of {@link ConnectOptions.callTimeoutMs}. */
export const DEFAULT_CALL_TIMEOUT_MS = 30_000;

/**
 * Bytes the client lets its transport hold before it holds back: stdin data and requests wait
 * (in their callers' streams and in the client) until the guest has read enough, so a guest that
 * stops reading costs the host at most this plus one frame per sender, not everything written.
 */
export const TRANSPORT_HIGH_WATER = 1024 * 1024;

/** The agent's own wait when a request gives no `timeoutMs` (Mount, FindDevice, ConfigureInterface). */
const AGENT_WAIT_DEFAULT_MS = 10_000;
/** setTimeout's limit. */
const MAX_TIMEOUT_MS = 0x7fffffff;

/** Events of an {@link AgentClient}. */
export interface AgentClientEvents {
  /** The connection ended; `error` says why when it was not {@link AgentClient.close}. */
  close: (error: Error | undefined) => void;
}

interface PendingCall {
  method: string;
  schema: Schema<unknown>;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
}

/** A request frame waiting for room in the transport. */
interface QueuedRequest {
  stream: number;
  frame: Buffer;
}

/**
 * A typed client of the vmpod guest agent. Create it with {@link AgentClient.connect} (or
 * {@link AgentClient.connectUnix}); each method is one request. Several clients (one per
 * virtio-serial port, or per socket connection) can talk to the same agent at once: containers
 * belong to the agent, not to the session that created them.
 *
 * Everything received is treated as hostile: frames are bounded to {@link MAX_PAYLOAD} bytes,
 * every message is checked against its schema, and any violation closes the connection with an
 * {@link AgentProtocolError} (pending calls reject with it). Every call but {@link AgentClient.wait} has a
 * deadline ({@link ConnectOptions.callTimeoutMs}), and what the client writes is bounded by
 * {@link TRANSPORT_HIGH_WATER} bytes waiting in the transport: a guest that stops reading stalls
 * stdin writers and holds requests back instead of growing the host's memory.
 */
export class AgentClient extends EventEmitter<AgentClientEvents> {
  #transport: Duplex;
  #decoder = new FrameDecoder();
  #nextStream = 1;
  #calls = new Map<number, PendingCall>();
  #streams = new Map<number, StdioEndpoint>();
  #closed: Error | null = null;
  #info: AgentInfo | null = null;
  #callTimeoutMs: number;
  /** Requests waiting for the transport to fall below its bound, in stream id order. */
  #outbox: QueuedRequest[] = [];
  /** Stdio streams whose OpenStdio request has not been written yet: nothing may go out on them. */
  #unopened = new Set<number>();
  /** Stdio streams waiting for room in the transport. */
  #blocked = new Set<StdioEndpoint>();
  /** Called back as each frame leaves the transport's buffer. */
  #onWritten = (): void => this.#pump();

  private constructor(transport: Duplex, callTimeoutMs: number) {
    super();
    this.#transport = transport;
    this.#callTimeoutMs = callTimeoutMs;
    transport.on('data', (chunk: Buffer) => this.#onChunk(chunk));
    transport.on('error', (error) => this.#shutdown(new AgentClosedError(`agent connection failed: ${error.message}`, { cause: error })));
    transport.on('close', () => this.#shutdown(new AgentClosedError('the agent closed the connection')));
    transport.on('end', () => this.#shutdown(new AgentClosedError('the agent closed the connection')));
  }

  /**
   * Wraps a connected stream and performs the version handshake (Hello). On failure the stream
   * is destroyed and the error thrown: {@link AgentError} (e.g. version mismatch),
   * {@link AgentProtocolError}, {@link AgentClosedError}, {@link TimeoutError} or {@link AbortError}.
   */
  static async connect(transport: Duplex, options: ConnectOptions = {}): Promise<AgentClient> {
    let callTimeoutMs: number;
    try {
      callTimeoutMs = checkCallTimeout(options);
    } catch (error) {
      transport.destroy();
      throw error;
    }
    const client = new AgentClient(transport, callTimeoutMs);
    try {
      client.#info = await client.#call(
        'Hello',
        { version: PROTOCOL_VERSION, client: options.clientName ?? `vmpod-node/${process.pid}` },
        agentInfoSchema,
        { timeoutMs: options.timeoutMs ?? 30_000, ...(options.signal ? { signal: options.signal } : {}) },
      );
      if (client.#info.version !== PROTOCOL_VERSION) {
        throw new AgentProtocolError(`the agent answered Hello with protocol version ${client.#info.version}`);
      }
      if (client.#info.initialWindow !== INITIAL_WINDOW) {
        throw new AgentProtocolError(`the agent's stdio window is ${client.#info.initialWindow} bytes, this client's ${INITIAL_WINDOW}`);
      }
      return client;
    } catch (error) {
      client.close();
      throw error;
    }
  }

  /** Connects to a unix socket (QEMU's chardev for a virtio-serial port, or `--listen unix:PATH`). */
  static async connectUnix(socketPath: string, options: ConnectOptions = {}): Promise<AgentClient> {
    const path = validate.absolutePath(socketPath, 'socketPath');
    checkCallTimeout(options);
    const socket = net.createConnection({ path });
    await new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        socket.destroy();
        reject(new AbortError(`connecting to ${path}`));
      };
      if (options.signal?.aborted) return onAbort();
      options.signal?.addEventListener('abort', onAbort, { once: true });
      socket.once('connect', () => {
        options.signal?.removeEventListener('abort', onAbort);
        resolve();
      });
      socket.once('error', (error) => {
        options.signal?.removeEventListener('abort', onAbort);
        reject(new AgentClosedError(`cannot connect to the agent at ${path}: ${error.message}`, { cause: error }));
      });
    });
    return AgentClient.connect(socket, options);
  }

  /** What the agent reported in the handshake. */
  get info(): AgentInfo {
    return this.#info!;
  }

  /** True once the connection is closed. */
  get closed(): boolean {
    return this.#closed !== null;
  }

  /** Round trip to the agent. */
  async ping(options: CallOptions = {}): Promise<void> {
    await this.#call('Ping', {}, emptySchema, options);
  }

  /**
   * Creates a container from an OCI bundle or spec: namespaces, rootfs, mounts, cgroup; its
   * process waits for {@link startContainer}. Like `runc create`. Returns the init's pid.
   */
  async createContainer(request: CreateContainerRequest, options: CallOptions = {}): Promise<{ pid: number }> {
    const params: Record<string, unknown> = { id: validate.id(request.id, 'id') };
    if (request.bundle !== undefined) params['bundle'] = validate.absolutePath(request.bundle, 'bundle');
    if (request.config !== undefined) params['config'] = request.config;
    if (request.rootfs !== undefined) {
      params['rootfs'] = request.rootfs === 'builtin' ? 'builtin' : validate.absolutePath(request.rootfs, 'rootfs');
    }
    if (request.overlay !== undefined) {
      if (typeof request.overlay !== 'boolean') throw new InvalidArgumentError('overlay', 'must be true or false');
      if (request.overlay && (params['rootfs'] === undefined || params['rootfs'] === 'builtin')) {
        throw new InvalidArgumentError('overlay', 'needs a rootfs path (the builtin rootfs is copy-on-write already)');
      }
      params['overlay'] = request.overlay;
    }
    if (request.stdio !== undefined) params['stdio'] = request.stdio;
    if (request.direct !== undefined) params['direct'] = checkDirect(request.direct);
    if (params['bundle'] === undefined && params['config'] === undefined) {
      throw new InvalidArgumentError('bundle', 'give a bundle path or a config');
    }
    return this.#call('CreateContainer', params, pidSchema, options);
  }

  /** Starts a created container's process (`runc start`). Resolves once it has exec'd. */
  async startContainer(id: string, options: CallOptions = {}): Promise<{ pid: number }> {
    return this.#call('StartContainer', { id: validate.id(id) }, pidSchema, options);
  }

  /** Runs an extra process in a running container (`runc exec`); resolves once it has exec'd. */
  async exec(request: ExecRequest, options: CallOptions = {}): Promise<{ pid: number }> {
    const params: Record<string, unknown> = {
      containerId: validate.id(request.containerId, 'containerId'),
      execId: validate.id(request.execId, 'execId'),
      process: request.process,
    };
    if (request.stdio !== undefined) params['stdio'] = request.stdio;
    return this.#call('Exec', params, pidSchema, options);
  }

  /**
   * Attaches to a process's stdio. Each stream has one reader (or writer) at a time across all
   * sessions: a second attach gets `BUSY` until the first stream ends or its session closes.
   * Output is never lost: what the process writes while nobody is attached waits in the guest
   * pipe (and the process blocks once the pipe is full).
   */
  async openStdio(
    containerId: string,
    which: { execId?: string; stdin?: boolean; stdout?: boolean; stderr?: boolean },
    options: CallOptions = {},
  ): Promise<ProcessStdio> {
    const base: Record<string, unknown> = { containerId: validate.id(containerId, 'containerId') };
    if (which.execId !== undefined) base['execId'] = validate.id(which.execId, 'execId');
    const result: ProcessStdio = { stdin: null, stdout: null, stderr: null };
    const opened: (StdioReadable | StdioWritable)[] = [];
    try {
      for (const fd of ['stdin', 'stdout', 'stderr'] as const) {
        if (!which[fd]) continue;
        const stream = this.#allocStream();
        const link = this.#link(stream);
        const endpoint = fd === 'stdin' ? new StdioWritable(link) : new StdioReadable(link);
        this.#streams.set(stream, endpoint);
        this.#unopened.add(stream);
        opened.push(endpoint);
        await this.#call('OpenStdio', { ...base, fd }, emptySchema, options, { stream });
        if (fd === 'stdin') result.stdin = endpoint as StdioWritable;
        else result[fd] = endpoint as StdioReadable;
      }
    } catch (error) {
      for (const s of opened) s.destroy();
      throw error;
    }
    return result;
  }

  /** Sends a signal (`kill`); `all` signals every process of the container's cgroup. */
  async signal(
    containerId: string,
    signal: NodeJS.Signals | number,
    options: CallOptions & { execId?: string; all?: boolean } = {},
  ): Promise<void> {
    const number = typeof signal === 'number' ? signal : os.constants.signals[signal];
    const params: Record<string, unknown> = {
      containerId: validate.id(containerId, 'containerId'),
      signal: validate.integer(number, 'signal', 1, 64),
    };
    if (options.execId !== undefined) params['execId'] = validate.id(options.execId, 'execId');
    if (options.all !== undefined) params['all'] = options.all;
    await this.#call('Signal', params, emptySchema, options);
  }

  /**
   * Waits until the container's init (or an exec'd process) exits. Any session may wait. The
   * one call without a default deadline (a process may run for ever): it ends with the exit, the
   * connection, or the caller's `signal` or `timeoutMs`.
   */
  async wait(containerId: string, options: CallOptions & { execId?: string } = {}): Promise<ExitStatus> {
    const params: Record<string, unknown> = { containerId: validate.id(containerId, 'containerId') };
    if (options.execId !== undefined) params['execId'] = validate.id(options.execId, 'execId');
    return this.#call('Wait', params, exitStatusSchema, options, { deadline: 'none' });
  }

  /** Sets the terminal size of a process started with `process.terminal` (TIOCSWINSZ). */
  async resizeTty(
    containerId: string,
    size: { rows: number; cols: number },
    options: CallOptions & { execId?: string } = {},
  ): Promise<void> {
    const params: Record<string, unknown> = {
      containerId: validate.id(containerId, 'containerId'),
      rows: validate.integer(size.rows, 'rows', 1, 65535),
      cols: validate.integer(size.cols, 'cols', 1, 65535),
    };
    if (options.execId !== undefined) params['execId'] = validate.id(options.execId, 'execId');
    await this.#call('ResizeTty', params, emptySchema, options);
  }

  /** CPU, memory and pids of the container's cgroup. */
  async stats(containerId: string, options: CallOptions = {}): Promise<ContainerStats> {
    return this.#call('Stats', { containerId: validate.id(containerId, 'containerId') }, statsSchema, options);
  }

  /**
   * Freezes every process of a running container (cgroup v2 `cgroup.freeze`; `runc pause`) and
   * resolves once the kernel reports the cgroup frozen. The agent waits up to `freezeTimeoutMs`
   * (default 10000) and thaws it again if it does not freeze in time (the call's default deadline
   * is that much longer). Signals sent meanwhile wait until {@link resumeContainer} (SIGKILL
   * does not); an exec is refused. Agent feature `pause-container`.
   */
  async pauseContainer(id: string, options: CallOptions & { freezeTimeoutMs?: number } = {}): Promise<void> {
    await this.#freeze('PauseContainer', id, options);
  }

  /** Thaws a container paused by {@link pauseContainer} (`runc resume`); resolves once it runs again. */
  async resumeContainer(id: string, options: CallOptions & { freezeTimeoutMs?: number } = {}): Promise<void> {
    await this.#freeze('ResumeContainer', id, options);
  }

  async #freeze(method: 'PauseContainer' | 'ResumeContainer', id: string, options: CallOptions & { freezeTimeoutMs?: number }): Promise<void> {
    const params: Record<string, unknown> = { id: validate.id(id) };
    if (options.freezeTimeoutMs !== undefined) params['timeoutMs'] = validate.integer(options.freezeTimeoutMs, 'freezeTimeoutMs', 0, 600_000);
    await this.#call(method, params, emptySchema, options, { agentWaitMs: agentWait(options.freezeTimeoutMs) });
  }

  /**
   * Changes a created, running or paused container's limits (`runc update`): memory, cpu,
   * cpuset, pids, block I/O weight, written to its cgroup v2 files. Checked before it is sent
   * ({@link checkResources}); the agent refuses a controller the guest lacks, and restores what it
   * wrote when a later file fails. Agent feature `update-container`.
   */
  async updateContainer(id: string, resources: ContainerResources, options: CallOptions = {}): Promise<void> {
    const params = { id: validate.id(id), resources: checkResources(resources) };
    await this.#call('UpdateContainer', params, emptySchema, options);
  }

  /**
   * Deletes a container: its cgroup, its state and its stdio. A running container needs
   * `force` (its processes are SIGKILLed first); like `runc delete [--force]`.
   */
  async deleteContainer(id: string, options: CallOptions & { force?: boolean } = {}): Promise<void> {
    const params: Record<string, unknown> = { id: validate.id(id) };
    if (options.force !== undefined) params['force'] = options.force;
    await this.#call('DeleteContainer', params, emptySchema, options);
  }

  /** Every container the agent knows, whichever session created it. */
  async listContainers(options: CallOptions = {}): Promise<ContainerInfo[]> {
    return (await this.#call('ListContainers', {}, containerListSchema, options)).containers;
  }

  /**
   * Mounts a virtio-fs or 9p share, an ext4 block device, a tmpfs or a hugetlbfs in the guest,
   * on a target under the agent's state dir (`mount -t TYPE SOURCE TARGET`; for 9p `mount -t 9p
   * -o trans=virtio,version=9p2000.L,msize=131072 TAG TARGET`). For a hot-plugged block device
   * the agent waits up to `timeoutMs` for it to appear (and the call's default deadline is that
   * much longer). A 9p mount fails with `FAILED_PRECONDITION` when the guest kernel has no 9p,
   * `NOT_FOUND` when no device has the tag.
   */
  async mount(request: MountRequest, options: CallOptions = {}): Promise<MountResult> {
    const params: Record<string, unknown> = { ...request, target: validate.absolutePath(request.target, 'target') };
    return this.#call('Mount', params, mountResultSchema, options, { agentWaitMs: agentWait(request.timeoutMs) });
  }

  /**
   * Waits until the device the host plugged at guest PCI path `pciPath` (`SS/DD`: the root
   * port's slot, then the slot behind it) shows up in the guest, and with `netdev` until it has
   * a network interface; the agent gives up after `timeoutMs` (default 10000) with NOT_FOUND
   * (and the call's default deadline is that much longer). Reports its guest address, driver and
   * interfaces (agent feature `find-device`). Like `ls /sys/bus/pci/devices/0000:00:SS.0/*\/net`
   * in the guest.
   */
  async findDevice(request: FindDeviceRequest, options: CallOptions = {}): Promise<GuestDevice> {
    const { pciPath } = request;
    if (typeof pciPath !== 'string' || !/^[01][0-9a-f](\/[01][0-9a-f]){0,7}$/u.test(pciPath)) {
      throw new InvalidArgumentError('pciPath', `${JSON.stringify(pciPath)} is not a PCI path like "02/00"`);
    }
    const params: Record<string, unknown> = { pciPath };
    if (request.netdev !== undefined) params['netdev'] = request.netdev === true;
    if (request.timeoutMs !== undefined) params['timeoutMs'] = validate.integer(request.timeoutMs, 'timeoutMs', 0, 600_000);
    return this.#call('FindDevice', params, guestDeviceSchema, options, { agentWaitMs: agentWait(request.timeoutMs) });
  }

  /** Unmounts what {@link mount} mounted (`umount TARGET`). */
  async unmount(target: string, options: CallOptions = {}): Promise<void> {
    await this.#call('Unmount', { target: validate.absolutePath(target, 'target') }, emptySchema, options);
  }

  /**
   * Sends the host's time. The agent sets the guest clock when it is the guest's init (or runs
   * with --set-time); it always reports the offset it saw (host minus guest, in ms).
   */
  async setTime(now: Date = new Date(), options: CallOptions = {}): Promise<{ applied: boolean; offsetMs: number }> {
    const ms = now.getTime();
    if (!Number.isFinite(ms) || ms < 0) throw new InvalidArgumentError('now', 'must be a valid date after 1970');
    const result = await this.#call(
      'SetTime',
      { sec: Math.floor(ms / 1000), nsec: (ms % 1000) * 1_000_000 },
      setTimeSchema,
      options,
    );
    return { applied: result.applied, offsetMs: result.offsetNs / 1e6 };
  }

  /**
   * Configures the guest NIC that has `mac`: name, MTU, addresses, routes and static neighbours,
   * replacing what the agent set on it before (`ip link set dev X name NAME mtu M up; ip addr
   * replace ...; ip route replace ... proto 118; ip neigh replace ... nud permanent`). Waits up
   * to `timeoutMs` for a hot-plugged NIC to appear (and the call's default deadline is that much
   * longer). Needs the `network` feature.
   */
  async configureInterface(request: ConfigureInterfaceRequest, options: CallOptions = {}): Promise<ConfiguredInterface> {
    const params: Record<string, unknown> = {
      ...request,
      mac: validate.macAddress(request.mac, 'mac'),
      name: validate.interfaceName(request.name, 'name'),
    };
    return this.#call('ConfigureInterface', params, configuredInterfaceSchema, options, { agentWaitMs: agentWait(request.timeoutMs) });
  }

  /**
   * Takes down the guest NIC that has `mac` and removes its addresses, the agent's routes and
   * its static neighbours (before the NIC is unplugged). `found` is false when no NIC has it.
   */
  async removeInterface(mac: string, options: CallOptions = {}): Promise<{ found: boolean }> {
    return this.#call('RemoveInterface', { mac: validate.macAddress(mac, 'mac') }, removeInterfaceSchema, options);
  }

  /** The guest's hostname, interfaces (addresses, static neighbours) and unicast routes. */
  async listInterfaces(options: CallOptions = {}): Promise<GuestNetworkInfo> {
    return this.#call('ListInterfaces', {}, guestNetworkSchema, options);
  }

  /**
   * Sets the guest's hostname (as its init) and what containers created from now on get as
   * /etc/resolv.conf, /etc/hosts and /etc/hostname (existing containers' files are rewritten).
   */
  async setNetworkConfig(request: NetworkConfigRequest, options: CallOptions = {}): Promise<{ hostnameApplied: boolean }> {
    return this.#call('SetNetworkConfig', { ...request }, networkConfigSchema, options);
  }

  /**
   * Kills every container, unmounts, and powers the guest off (as PID 1; QEMU then exits) or
   * exits (on the host). Resolves when the agent has accepted the request.
   */
  async shutdown(options: CallOptions = {}): Promise<void> {
    await this.#call('Shutdown', {}, emptySchema, options);
  }

  /** Closes the connection; pending calls reject with {@link AgentClosedError}. Containers live on. */
  close(): void {
    this.#shutdown(null);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  // --- internals ---------------------------------------------------------------------------

  #allocStream(): number {
    const stream = this.#nextStream;
    if (stream > 0xfffffffd) throw new AgentClosedError('stream ids exhausted: reconnect');
    this.#nextStream += 2;
    return stream;
  }

  #link(stream: number): StdioLink {
    return {
      data: (payload) => this.#send(encodeFrame(stream, FrameType.Data, 0, payload)),
      window: (increment) => {
        const b = Buffer.allocUnsafe(4);
        b.writeUInt32BE(increment, 0);
        this.#send(encodeFrame(stream, FrameType.Data, FLAG_WINDOW, b));
      },
      close: () => {
        // The agent never saw this stream (its OpenStdio was abandoned before it went out).
        if (this.#unopened.has(stream)) return;
        this.#send(encodeFrame(stream, FrameType.Data, FLAG_CLOSE));
      },
      release: () => {
        const endpoint = this.#streams.get(stream);
        if (endpoint) this.#blocked.delete(endpoint);
        this.#streams.delete(stream);
        this.#unopened.delete(stream);
      },
      violation: (error) => this.#shutdown(error),
      congested: () => this.#outbox.length > 0 || this.#transportFull(),
      waitWritable: () => {
        const endpoint = this.#streams.get(stream);
        if (endpoint && !this.#closed) this.#blocked.add(endpoint);
      },
    };
  }

  /** The transport holds {@link TRANSPORT_HIGH_WATER} bytes or more that the guest has not read. */
  #transportFull(): boolean {
    return this.#transport.writableLength >= TRANSPORT_HIGH_WATER;
  }

  /**
   * Writes a frame. Each write is called back when the frame has left the transport's buffer
   * (handed to the kernel, for a socket): that is when waiting requests and stdio streams may
   * go on. The transport's own highWaterMark (16 KiB for a socket, less than one data frame)
   * is not used: the client bounds the bytes waiting by {@link TRANSPORT_HIGH_WATER} itself.
   */
  #send(frame: Buffer): void {
    if (this.#closed) return;
    this.#transport.write(frame, this.#onWritten);
  }

  /** Writes the requests that waited for room, then lets the blocked stdio streams go on. */
  #pump(): void {
    if (this.#closed) return;
    while (this.#outbox.length > 0 && !this.#transportFull()) {
      const { stream, frame } = this.#outbox.shift()!;
      this.#unopened.delete(stream);
      this.#send(frame);
    }
    if (this.#outbox.length > 0 || this.#transportFull() || this.#blocked.size === 0) return;
    const blocked = [...this.#blocked];
    this.#blocked.clear();
    for (const endpoint of blocked) {
      endpoint.onWritable();
      if (this.#closed) return;
    }
  }

  /**
   * Sends a request and waits for its answer. The deadline is the caller's `timeoutMs`, else
   * the connection's call timeout (plus `agentWaitMs`, the time the request asks the agent to
   * wait for something, or its default), else (`deadline: 'none'`, for Wait) none. A request
   * waits in the client while the transport is full; abandoned there (deadline, abort), it is
   * never sent.
   */
  #call<T>(
    method: string,
    params: Record<string, unknown>,
    schema: Schema<T>,
    options: CallOptions,
    extra: { stream?: number; deadline?: 'default' | 'none'; agentWaitMs?: number } = {},
  ): Promise<T> {
    if (this.#closed) return Promise.reject(this.#closed);
    const { signal } = options;
    let timeoutMs: number | undefined;
    if (options.timeoutMs !== undefined) {
      const t = options.timeoutMs;
      if (typeof t !== 'number' || !(t >= 0 && t <= MAX_TIMEOUT_MS)) {
        return Promise.reject(new InvalidArgumentError('timeoutMs', `${JSON.stringify(t)} is not a number of milliseconds in [0, ${MAX_TIMEOUT_MS}]`));
      }
      timeoutMs = t;
    } else if (extra.deadline !== 'none') {
      timeoutMs = Math.min(this.#callTimeoutMs + (extra.agentWaitMs ?? 0), MAX_TIMEOUT_MS);
    }
    const id = extra.stream ?? this.#allocStream();
    let payload: Buffer;
    try {
      payload = Buffer.from(JSON.stringify({ method, params }));
    } catch (cause) {
      return Promise.reject(new InvalidArgumentError('params', `cannot be encoded as JSON`, { cause }));
    }
    if (payload.length > MAX_PAYLOAD) {
      return Promise.reject(new InvalidArgumentError('params', `request of ${payload.length} bytes exceeds ${MAX_PAYLOAD}`));
    }
    return new Promise<T>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const cleanup = (): void => {
        this.#calls.delete(id);
        if (timer) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        // Still waiting for room in the transport: it never goes out.
        const queued = this.#outbox.findIndex((r) => r.stream === id);
        if (queued >= 0) this.#outbox.splice(queued, 1);
      };
      const onAbort = (): void => {
        cleanup();
        reject(new AbortError(method, { cause: signal?.reason }));
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      if (timeoutMs !== undefined) {
        const ms = timeoutMs;
        timer = setTimeout(() => {
          cleanup();
          reject(new TimeoutError(`agent call ${method}`, ms));
        }, ms);
      }
      this.#calls.set(id, {
        method,
        schema,
        resolve: (value) => {
          cleanup();
          resolve(value as T);
        },
        reject: (error) => {
          cleanup();
          reject(error);
        },
      });
      const frame = encodeFrame(id, FrameType.Request, 0, payload);
      if (this.#outbox.length === 0 && !this.#transportFull()) {
        this.#unopened.delete(id);
        this.#send(frame);
      } else {
        this.#outbox.push({ stream: id, frame });
      }
    });
  }

  #onChunk(chunk: Buffer): void {
    if (this.#closed) return;
    try {
      for (const frame of this.#decoder.push(chunk)) {
        this.#onFrame(frame);
        if (this.#closed) return;
      }
    } catch (error) {
      this.#shutdown(error instanceof AgentProtocolError ? error : new AgentProtocolError(String(error), { cause: error }));
    }
  }

  #onFrame(frame: Frame): void {
    const { stream } = frame;
    if (frame.type === FrameType.Response) {
      if (stream === 0) {
        // The agent reports why it hangs up on us.
        const { message } = parseError(frame.payload, 'session');
        throw new AgentProtocolError(`the agent closed the session: ${message}`);
      }
      const call = this.#calls.get(stream);
      if (!call && this.#info === null) return; // noise left over from a previous host on this channel
      if (!call) {
        // A late answer to an aborted or timed-out call; a stream id we never used is an attack or a bug.
        if (stream >= this.#nextStream) throw new AgentProtocolError(`response on unknown stream ${stream}`);
        return;
      }
      const body = parseJson(frame.payload, call.method);
      if (Object.keys(body).length !== 1 || ('result' in body) === ('error' in body)) {
        throw new AgentProtocolError(`${call.method}: a response must hold exactly one of "result" and "error"`);
      }
      if ('error' in body) {
        const e = errorSchema(body['error'], `${call.method}.error`);
        // A failed OpenStdio leaves its stream to openStdio(), which destroys it.
        this.#streams.delete(stream);
        call.reject(new AgentError(call.method, e.code, e.message, e.errno ?? undefined));
        return;
      }
      call.resolve(call.schema(body['result'], `${call.method}.result`));
      return;
    }
    const endpoint = this.#streams.get(stream);
    if (!endpoint) {
      if (this.#info === null) return; // before the handshake: see above
      if (stream >= this.#nextStream) throw new AgentProtocolError(`data frame on unknown stream ${stream}`);
      return; // a stream we already ended or detached from
    }
    if (frame.flags & FLAG_CLOSE) endpoint.onClose();
    else if (frame.flags & FLAG_WINDOW) endpoint.onWindow(frame.payload.readUInt32BE(0));
    else endpoint.onData(frame.payload);
  }

  #shutdown(error: Error | null): void {
    if (this.#closed) return;
    this.#closed = error ?? new AgentClosedError();
    const calls = [...this.#calls.values()];
    this.#calls.clear();
    for (const call of calls) call.reject(this.#closed);
    this.#outbox = [];
    this.#blocked.clear();
    this.#unopened.clear();
    const streams = [...this.#streams.values()];
    this.#streams.clear();
    // After close() the streams just end; after a failure they error (their data is incomplete).
    for (const s of streams) s.onError(error ?? null);
    this.#transport.destroy();
    this.emit('close', error ?? undefined);
  }
}

function checkCallTimeout(options: ConnectOptions): number {
  if (options.callTimeoutMs === undefined) return DEFAULT_CALL_TIMEOUT_MS;
  return validate.integer(options.callTimeoutMs, 'callTimeoutMs', 1, MAX_TIMEOUT_MS);
}

/** How long a request makes the agent wait (its `timeoutMs`, or the agent's default). */
function agentWait(timeoutMs: unknown): number {
  return typeof timeoutMs === 'number' && Number.isFinite(timeoutMs) && timeoutMs >= 0 ? timeoutMs : AGENT_WAIT_DEFAULT_MS;
}

function checkDirect(direct: NonNullable<CreateContainerRequest['direct']>): Record<string, DirectStdioRequest> {
  const out: Record<string, DirectStdioRequest> = {};
  for (const fd of ['stdout', 'stderr'] as const) {
    const d = direct[fd];
    if (d === undefined) continue;
    if (!/^vmpod\.stream\.[0-9]{1,2}$/u.test(d.port)) throw new InvalidArgumentError(`direct.${fd}.port`, 'must be vmpod.stream.N');
    if (!/^[0-9a-f]{64}$/u.test(d.cookie)) throw new InvalidArgumentError(`direct.${fd}.cookie`, 'must be 64 lowercase hex digits');
    out[fd] = { port: d.port, cookie: d.cookie };
  }
  return out;
}

function parseJson(payload: Buffer, what: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(payload.toString('utf8'));
  } catch (cause) {
    throw new AgentProtocolError(`${what}: the response is not valid JSON`, { cause });
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new AgentProtocolError(`${what}: the response is not a JSON object`);
  }
  return value as Record<string, unknown>;
}

function parseError(payload: Buffer, what: string): { message: string } {
  const body = parseJson(payload, what);
  return errorSchema(body['error'], `${what}.error`);
}
