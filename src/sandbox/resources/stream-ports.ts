/**
 * Stream ports: the fast path of a container init's stdout and stderr (docs/sandbox.md, "Output
 * streams"). The VM gets a second virtio-serial device with `streamPorts` ports
 * (`vmpod.stream.0..K-1`), each bound to a unix socket in the boot's folder. A container created
 * while ports are free gets one per output: the host connects to the port's socket, the agent
 * hands the port to the container's init as its stdout (or stderr), and the container's `write()`
 * goes to the host with one copy in the guest instead of three (container → pipe → agent →
 * port). Ends are marked by the agent with a random marker (src/agent/direct-stream.ts).
 *
 * Who holds a port: this resource's state in the record (port → container, output and marker,
 * written under the sandbox lock before the port is used) says which container the agent may have
 * given it to; a claim whose container is not in the record's containers any more is free. A
 * lock file per port (`stream-N.lock`, flock'ed by the process connected to the port's socket,
 * dropped by the kernel when that process dies) says that a host process still reads it. A port
 * is given out only when both are free.
 *
 * @internal
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { connectDirectStream, newMarker, type DirectStreamReadable } from '../../agent/direct-stream.js';
import { AlreadyExistsError, InvalidArgumentError } from '../../errors.js';
import { FileLock } from '../../state/lock.js';
import type { ResolvedSandboxConfig } from '../config.js';
import type { ResourceContext, SandboxResource, VmContribution } from './resource.js';

/** Key of the stream ports' state in the sandbox record. */
export const STREAM_PORTS_KIND = 'streamPorts';
/** Name prefix of the stream ports (the agent accepts only `vmpod.stream.N`). */
export const STREAM_PORT_PREFIX = 'vmpod.stream.';

/** An output of a container's init. */
export type Output = 'stdout' | 'stderr';

/** What the record says about one port. */
export interface PortEntry {
  container: string;
  fd: Output;
  /** The marker, hex: a process that takes the stream over needs it. */
  marker: string;
}

/** The persisted state: claims by port index. */
export interface StreamPortsState {
  ports: Record<string, PortEntry>;
}

/** Parses the state from a record, keeping only well-formed claims. */
export function parseStreamPorts(value: unknown): StreamPortsState {
  const ports: Record<string, PortEntry> = {};
  const given = (value as { ports?: unknown } | undefined)?.ports;
  if (typeof given === 'object' && given !== null) {
    for (const [key, entry] of Object.entries(given as Record<string, Partial<PortEntry>>)) {
      if (!/^\d{1,2}$/u.test(key)) continue;
      if (typeof entry?.container === 'string' && (entry.fd === 'stdout' || entry.fd === 'stderr') && typeof entry.marker === 'string' && /^[0-9a-f]+$/u.test(entry.marker)) {
        ports[key] = { container: entry.container, fd: entry.fd, marker: entry.marker };
      }
    }
  }
  return { ports };
}

/** The unix socket QEMU binds to stream port `index`, in the boot's folder. */
export function streamSocket(bootDir: string, index: number): string {
  return path.join(bootDir, `stream-${index}.sock`);
}

/** The lock file of port `index` (in the sandbox folder: it outlives boots, like its readers). */
export function streamLock(dir: string, index: number): string {
  return path.join(dir, `stream-${index}.lock`);
}

function portCount(config: Readonly<ResolvedSandboxConfig>): number {
  return config.streamPorts ?? 0;
}

/** The stream ports as a sandbox resource: a virtio-serial device, and no claims at each boot. */
export class StreamPortsResource implements SandboxResource<StreamPortsState> {
  readonly kind = STREAM_PORTS_KIND;

  parse(value: unknown): StreamPortsState {
    return parseStreamPorts(value);
  }

  async prepare(ctx: ResourceContext<StreamPortsState>): Promise<VmContribution> {
    const count = portCount(ctx.config);
    if (count === 0 || !ctx.boot) return {};
    const bootDir = ctx.boot.dir;
    await ctx.update((s) => void (s.ports = {})); // a new VM: no port is in use
    const ports = Array.from({ length: count }, (_, i) => ({ name: `${STREAM_PORT_PREFIX}${i}`, socket: streamSocket(bootDir, i) }));
    return { devices: [{ kind: 'virtio-serial', id: 'streams', ports }] };
  }

  /** The VM is gone, and with it every port (their sockets go with the boot's folder). */
  async release(ctx: ResourceContext<StreamPortsState>): Promise<void> {
    await ctx.update((s) => void (s.ports = {}));
  }
}

/** A port picked for an output of a container. */
export interface PortClaim {
  index: number;
  fd: Output;
  marker: Buffer;
  /** Held while this process reads the port. */
  lock: FileLock;
}

/**
 * Picks free ports for `outputs` of container `id` and records them in `state` (inside the
 * container's reservation transaction). A claim of a container that `live` does not have is
 * stale (its container is gone) and dropped. Returns fewer claims than outputs when ports run out.
 */
export async function claimPorts(state: StreamPortsState, config: Readonly<ResolvedSandboxConfig>, dir: string, id: string, outputs: readonly Output[], live: ReadonlySet<string>): Promise<PortClaim[]> {
  for (const [key, entry] of Object.entries(state.ports)) if (!live.has(entry.container)) delete state.ports[key];
  const claims: PortClaim[] = [];
  try {
    for (let i = 0; i < portCount(config) && claims.length < outputs.length; i++) {
      if (state.ports[i] !== undefined) continue;
      let lock: FileLock;
      try {
        lock = await FileLock.acquire(streamLock(dir, i), { timeoutMs: 0 });
      } catch {
        continue; // another process still reads this port
      }
      claims.push({ index: i, fd: outputs[claims.length]!, marker: newMarker(), lock });
    }
  } catch (error) {
    for (const c of claims) await c.lock.release();
    throw error;
  }
  for (const c of claims) state.ports[c.index] = { container: id, fd: c.fd, marker: c.marker.toString('hex') };
  return claims;
}

/** Frees the ports `state` gives to container `id`. */
export function releaseClaims(state: StreamPortsState, id: string): void {
  for (const [key, entry] of Object.entries(state.ports)) if (entry.container === id) delete state.ports[key];
}

/** Connects to a claimed port as its reader; the claim's lock is released when the stream closes. */
export async function openClaim(bootDir: string, id: string, claim: PortClaim, signal?: AbortSignal): Promise<DirectStreamReadable> {
  const lock = claim.lock;
  return connectDirectStream(streamSocket(bootDir, claim.index), claim.marker, {
    label: `${claim.fd} of container "${id}"`,
    onClose: () => void lock.release(),
    ...(signal ? { signal } : {}),
  });
}

/**
 * Connects to the stream port `state` gives to output `fd` of container `id`, as a reader that
 * joins a stream under way (no start marker awaited). For a process that takes a stream over after
 * its first reader went away: it gets what the container writes from then on, and the end; what
 * was in flight to the first reader is lost (docs/sandbox.md). Fails while another process is
 * connected.
 */
export async function reopenPort(state: StreamPortsState, dir: string, bootDir: string, id: string, fd: Output, signal?: AbortSignal): Promise<DirectStreamReadable> {
  const found = Object.entries(state.ports).find(([, e]) => e.container === id && e.fd === fd);
  if (!found) throw new InvalidArgumentError('fd', `${fd} of container "${id}" has no stream port`);
  const index = Number(found[0]);
  let lock: FileLock;
  try {
    lock = await FileLock.acquire(streamLock(dir, index), { timeoutMs: 0 });
  } catch (error) {
    throw new AlreadyExistsError('reader of stream', `${id}/${fd}`, { cause: error }); // another process reads it
  }
  try {
    return await connectDirectStream(streamSocket(bootDir, index), Buffer.from(found[1].marker, 'hex'), {
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

/** Removes the port lock files of a sandbox being deleted. */
export async function removePortLocks(dir: string, count: number): Promise<void> {
  for (let i = 0; i < count; i++) await fs.rm(streamLock(dir, i), { force: true });
}
