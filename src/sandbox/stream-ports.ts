/**
 * Stream ports: the fast path of a container init's stdout and stderr (docs/sandbox.md,
 * "Output streams"). The VM gets a second virtio-serial device with `streamPorts` ports
 * (`vmpod.stream.0..K-1`), each bound to a unix socket in the sandbox folder. A container
 * created while ports are free gets one per output: the host connects to the port's socket,
 * the agent hands the port to the container's init as its stdout (or stderr), and the
 * container's `write()` goes to the host with one copy in the guest instead of three
 * (container → pipe → agent → port). Ends are marked by the agent with a random marker
 * (src/agent/direct-stream.ts).
 *
 * Who holds a port: the sandbox record (this resource's state: port → container, output and
 * marker, written under the sandbox lock before the port is used) says which container the
 * agent may have given it to; it is freed when the container is deleted or the VM stops. A
 * lock file per port (`stream-N.lock`, flock'ed by the process connected to the port's
 * socket, dropped by the kernel when that process dies) says that a host process still reads
 * it. A port is given out only when both are free.
 *
 * @internal
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import type { AgentClient } from '../agent/client.js';
import { connectDirectStream, newMarker, type DirectStreamReadable } from '../agent/direct-stream.js';
import { AgentError } from '../agent/errors.js';
import type { OciSpec } from '../agent/messages.js';
import type { StdioOptions } from '../container/container.js';
import { AlreadyExistsError, InvalidArgumentError } from '../errors.js';
import { FileLock } from '../state/lock.js';
import type { ResolvedSandboxConfig } from './config.js';
import type { GuestContext, ResourceContext, SandboxResource, VmContribution } from './resource.js';

/** Key of the stream ports' state in the sandbox record. */
export const STREAM_PORTS_KIND = 'streamPorts';
/** Name prefix of the stream ports (the agent accepts only `vmpod.stream.N`). */
export const STREAM_PORT_PREFIX = 'vmpod.stream.';
/** Stream ports of a sandbox unless its config says otherwise: four containers with both outputs. */
export const DEFAULT_STREAM_PORTS = 8;
/** Most stream ports a sandbox can have (one virtio-serial device). */
export const MAX_STREAM_PORTS = 30;

/**
 * How a container's init stdout and stderr reach the host:
 * - `auto` (default): each through a stream port of its own when one is free (the fast path),
 *   else through the agent;
 * - `agent`: always through the agent's multiplexed channel. Choose it when another process may
 *   have to take the output over later (see docs/sandbox.md, "Output streams").
 */
export type StdioTransport = 'auto' | 'agent';

/** Which stdio streams a container's init gets, and how they travel. */
export interface InitStdioOptions extends StdioOptions {
  /** `auto` (default) or `agent`; see {@link StdioTransport}. */
  transport?: StdioTransport;
}

type Output = 'stdout' | 'stderr';

/** What the record says about one port. */
interface PortEntry {
  container: string;
  fd: Output;
  /** The marker, hex: a process that takes the stream over needs it. */
  marker: string;
}

interface StreamPortsState {
  /** By port index. */
  ports: Record<string, PortEntry>;
}

function stateOf(value: unknown): StreamPortsState {
  const ports: Record<string, PortEntry> = {};
  const given = (value as { ports?: unknown } | undefined)?.ports;
  if (typeof given === 'object' && given !== null) {
    for (const [key, entry] of Object.entries(given as Record<string, Partial<PortEntry>>)) {
      if (typeof entry?.container === 'string' && (entry.fd === 'stdout' || entry.fd === 'stderr') && typeof entry.marker === 'string') {
        ports[key] = { container: entry.container, fd: entry.fd, marker: entry.marker };
      }
    }
  }
  return { ports };
}

/** The unix socket QEMU binds to stream port `index`. */
export function streamSocket(dir: string, index: number): string {
  return path.join(dir, `stream-${index}.sock`);
}

function streamLock(dir: string, index: number): string {
  return path.join(dir, `stream-${index}.lock`);
}

function portCount(config: Readonly<ResolvedSandboxConfig>): number {
  return config.streamPorts ?? 0;
}

/** Checks `streamPorts` of a sandbox config (default {@link DEFAULT_STREAM_PORTS}; 0 turns the fast path off). */
export function checkStreamPorts(value: unknown): number {
  if (value === undefined) return DEFAULT_STREAM_PORTS;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > MAX_STREAM_PORTS) {
    throw new InvalidArgumentError('streamPorts', `must be an integer from 0 to ${MAX_STREAM_PORTS}`);
  }
  return value;
}

/** Checks `stdio.transport` of a container config. */
export function stdioTransport(stdio: InitStdioOptions | undefined): StdioTransport {
  const transport = stdio?.transport ?? 'auto';
  if (transport !== 'auto' && transport !== 'agent') throw new InvalidArgumentError('stdio.transport', 'must be "auto" or "agent"');
  return transport;
}

/** The stream ports as a sandbox resource: a virtio-serial device, and the ports' state reset at every boot. */
export class StreamPortsResource implements SandboxResource {
  readonly kind = STREAM_PORTS_KIND;

  async prepare(ctx: ResourceContext): Promise<VmContribution> {
    await ctx.save({ ports: {} }); // a new VM: no port is in use
    const count = portCount(ctx.config);
    const ports = Array.from({ length: count }, (_, i) => ({ name: `${STREAM_PORT_PREFIX}${i}`, socket: streamSocket(ctx.dir, i) }));
    for (const port of ports) await fs.rm(port.socket, { force: true });
    return count === 0 ? {} : { devices: [{ kind: 'virtio-serial', id: 'streams', ports }] };
  }

  async release(ctx: ResourceContext): Promise<void> {
    // The VM is gone, and with it every port. The lock files stay until the folder goes:
    // a process may still hold one while its connection closes.
    await ctx.save({ ports: {} });
    for (let i = 0; i < portCount(ctx.config); i++) await fs.rm(streamSocket(ctx.dir, i), { force: true });
  }
}

/** Frees the ports the record gives to container `id` (it was deleted). Mutates `record`. */
export function releaseStreamPorts(record: { resources: Record<string, unknown> }, id: string): void {
  const value = record.resources[STREAM_PORTS_KIND];
  if (value === undefined) return;
  const state = stateOf(value);
  for (const [key, entry] of Object.entries(state.ports)) {
    if (entry.container === id) delete state.ports[key];
  }
  record.resources[STREAM_PORTS_KIND] = state;
}

/** What {@link createInit} needs from the sandbox. */
export interface StreamHost {
  readonly agent: AgentClient;
  readonly dir: string;
  readonly config: Readonly<ResolvedSandboxConfig>;
  withResource<T>(kind: string, fn: (ctx: GuestContext) => Promise<T>, signal?: AbortSignal): Promise<T>;
}

/** A container's init as {@link createInit} makes it. */
export interface InitRequest {
  id: string;
  config: OciSpec;
  rootfs: string;
  /** `rootfs` is the read-only lower layer of a copy-on-write rootfs (a guest rootfs image). */
  overlay?: boolean;
  stdio: Required<StdioOptions>;
  transport: StdioTransport;
}

/** The init's pid and stdio streams. */
export interface CreatedInit {
  pid: number;
  stdio: { stdin: Writable | null; stdout: Readable | null; stderr: Readable | null };
}

interface Claim {
  index: number;
  fd: Output;
  marker: Buffer;
  lock: FileLock;
}

/** The outputs of `request` that may take the fast path. */
function directCandidates(host: StreamHost, request: InitRequest): Output[] {
  if (request.transport === 'agent' || portCount(host.config) === 0) return [];
  if (request.config.process.terminal === true) return [];
  if (!host.agent.info.features.includes('direct-stdio')) return []; // an older agent in a user's initramfs
  // Only a new pid namespace dies with its init; the agent refuses direct streams otherwise.
  if (request.config.linux?.namespaces?.some((ns) => ns.type === 'pid' && ns.path !== undefined)) return [];
  return (['stdout', 'stderr'] as const).filter((fd) => request.stdio[fd]);
}

/** Picks free ports for `outputs` under the sandbox lock and records them. */
async function claimPorts(host: StreamHost, id: string, outputs: Output[], signal?: AbortSignal): Promise<Claim[]> {
  return host.withResource(
    STREAM_PORTS_KIND,
    async (ctx) => {
      const state = stateOf(ctx.state);
      const picked: { index: number; lock: FileLock }[] = [];
      const pick = async (): Promise<void> => {
        for (let i = 0; i < portCount(ctx.config) && picked.length < outputs.length; i++) {
          if (state.ports[i] !== undefined || picked.some((p) => p.index === i)) continue;
          try {
            picked.push({ index: i, lock: await FileLock.acquire(streamLock(ctx.dir, i), { timeoutMs: 0 }) });
          } catch {
            // another process still reads this port
          }
        }
      };
      try {
        await pick();
        if (picked.length < outputs.length && Object.keys(state.ports).length > 0) {
          // Ports of containers the agent no longer has: a process deleted them and died before
          // it could update the record.
          const alive = new Set((await ctx.agent.listContainers(signal ? { signal } : {})).map((c) => c.id));
          for (const [key, entry] of Object.entries(state.ports)) if (!alive.has(entry.container)) delete state.ports[key];
          await pick();
        }
        const claims = picked.map((p, i): Claim => ({ ...p, fd: outputs[i]!, marker: newMarker() }));
        for (const c of claims) state.ports[c.index] = { container: id, fd: c.fd, marker: c.marker.toString('hex') };
        if (claims.length > 0) await ctx.save(state);
        return claims;
      } catch (error) {
        for (const p of picked) await p.lock.release();
        throw error;
      }
    },
    signal,
  );
}

async function unclaim(host: StreamHost, id: string, claims: readonly Claim[]): Promise<void> {
  await host.withResource(STREAM_PORTS_KIND, async (ctx) => {
    const state = stateOf(ctx.state);
    for (const c of claims) if (state.ports[c.index]?.container === id) delete state.ports[c.index];
    await ctx.save(state);
  });
}

/**
 * Creates a container's init in the agent with its stdio: stdout and stderr on stream ports
 * when the transport allows it and ports are free, the rest (stdin, ttys, outputs without a
 * port) through the agent. When the agent finds a port busy (something in the guest still
 * holds it open) the container is created again without stream ports.
 */
export async function createInit(host: StreamHost, request: InitRequest, signal?: AbortSignal): Promise<CreatedInit> {
  const options = signal ? { signal } : {};
  const outputs = directCandidates(host, request);
  let claims = outputs.length > 0 ? await claimPorts(host, request.id, outputs, signal) : [];
  const direct: Partial<Record<Output, DirectStreamReadable>> = {};
  try {
    for (const c of claims) {
      const lock = c.lock;
      direct[c.fd] = await connectDirectStream(streamSocket(host.dir, c.index), c.marker, {
        label: `${c.fd} of container "${request.id}"`,
        onClose: () => void lock.release(),
        ...options,
      });
    }
    const base = { id: request.id, config: request.config, rootfs: request.rootfs, stdio: request.stdio, ...(request.overlay ? { overlay: true } : {}) };
    let pid: number;
    try {
      const ports = Object.fromEntries(claims.map((c) => [c.fd, { port: `${STREAM_PORT_PREFIX}${c.index}`, cookie: c.marker.toString('hex') }]));
      ({ pid } = await host.agent.createContainer(claims.length > 0 ? { ...base, direct: ports } : base, options));
    } catch (error) {
      if (!(claims.length > 0 && error instanceof AgentError && error.agentCode === 'BUSY')) throw error;
      for (const stream of Object.values(direct)) stream.destroy();
      for (const c of claims) await c.lock.release();
      await unclaim(host, request.id, claims);
      claims = [];
      delete direct.stdout;
      delete direct.stderr;
      ({ pid } = await host.agent.createContainer(base, options));
    }
    const rest = await host.agent.openStdio(
      request.id,
      { stdin: request.stdio.stdin, stdout: request.stdio.stdout && !direct.stdout, stderr: request.stdio.stderr && !direct.stderr },
      options,
    );
    return { pid, stdio: { stdin: rest.stdin, stdout: direct.stdout ?? rest.stdout, stderr: direct.stderr ?? rest.stderr } };
  } catch (error) {
    // The record's entries go with the container (the caller releases it).
    for (const stream of Object.values(direct)) stream.destroy();
    for (const c of claims) await c.lock.release();
    throw error;
  }
}

/**
 * Connects to the stream port the record gives to output `fd` of container `id`, as a reader
 * that joins a stream under way (no start marker awaited). For a process that takes a stream
 * over after its first reader went away: it gets what the container writes from then on, and
 * the end; what was in flight to the first reader is lost (docs/sandbox.md). Fails while
 * another process is connected.
 */
export async function reopenDirectStream(host: StreamHost, id: string, fd: Output, signal?: AbortSignal): Promise<DirectStreamReadable> {
  const { index, entry, lock } = await host.withResource(
    STREAM_PORTS_KIND,
    async (ctx) => {
      const found = Object.entries(stateOf(ctx.state).ports).find(([, e]) => e.container === id && e.fd === fd);
      if (!found) throw new InvalidArgumentError('fd', `${fd} of container "${id}" has no stream port`);
      const index = Number(found[0]);
      let lock: FileLock;
      try {
        lock = await FileLock.acquire(streamLock(ctx.dir, index), { timeoutMs: 0 });
      } catch (error) {
        throw new AlreadyExistsError('reader of stream', `${id}/${fd}`, { cause: error }); // another process reads it
      }
      return { index, entry: found[1], lock };
    },
    signal,
  );
  try {
    return await connectDirectStream(streamSocket(host.dir, index), Buffer.from(entry.marker, 'hex'), {
      label: `${fd} of container "${id}"`,
      awaitStart: false,
      onClose: () => void lock.release(),
      ...(signal ? { signal } : {}),
    });
  } catch (error) {
    await lock.release();
    throw error;
  }
}
