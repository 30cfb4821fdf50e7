/**
 * The container manager: what the host does for a sandbox's containers. A container's id is
 * reserved in the sandbox record before anything is made (a second create of the same id, from
 * any process, is refused and touches nothing); its host side is recorded in its entry as it is
 * made (rootfs share, bind sources in the share, stream ports, a rootfs image disk), under the
 * sandbox lock; the agent creates it without the lock; the entry is committed at the end. A
 * create that fails undoes exactly what it made, and a create that crashed is undone by the next
 * process that needs the id, or by the VM's stop.
 *
 * @internal
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import type { Readable, Writable } from 'node:stream';
import type { AgentClient } from '../agent/client.js';
import { AgentError } from '../agent/errors.js';
import type { DirectStreamReadable } from '../agent/direct-stream.js';
import type { OciMount, OciSpec } from '../agent/messages.js';
import { runAll } from '../cleanup.js';
import { normaliseStdio, type StdioOptions } from '../container/container.js';
import { ContainerLogWriter, logPaths, makeLogDir, removeLog, resolveLogConfig, type ContainerLogConfig, type ResolvedLogConfig } from '../container/log-file.js';
import { LOGGER_BINARY, isAlive, spawnDetached, terminate, waitForProcessExit, type ProcessIdentity } from '../host/process.js';
import { native } from '../native.js';
import { printableField } from '../printable.js';
import { SandboxError } from './boot.js';
import { adaptSpecForGuest, applyOverrides, checkOverrides, defaultSpec, readBundle, type ProcessOverrides } from '../container/spec.js';
import { AlreadyExistsError, InvalidArgumentError, InvalidStateError, NotFoundError } from '../errors.js';
import type { VirtualMachine } from '../hypervisor/hypervisor.js';
import * as validate from '../validate.js';
import { checkContainerVolumes, type ContainerVolume } from '../volume/spec.js';
import { newOwner, ownedHere, ownerAlive, type ContainerEntry, type Journal, type Owner, type SandboxRecord, type Transaction } from './record.js';
import type { ContextOptions, ResourceManager } from './resources/manager.js';
import { guestRootfsImageDir } from './resources/guest-rootfs.js';
import { guestSharedDir, SHARED_FS_KIND, type Share } from './resources/share.js';
import { STREAM_PORTS_KIND, STREAM_PORT_PREFIX, claimPorts, openClaim, releaseClaims, streamSocket, type Output, type PortClaim, type StreamPortsState } from './resources/stream-ports.js';
import { VOLUMES_KIND, detachVolume, hotplugVolume, type VolumesState } from './resources/volumes/index.js';
import { containerMounts, makeMountPoints, makeRootfsImage, rootfsVolumeName } from './resources/volumes/container.js';
import type { CallOptions } from '../options.js';
import { Image, type PreparedImage } from '../image/image.js';

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
  /**
   * The init's stdout and stderr go to the container's log only, written by a detached writer
   * (`vmpod-logger`) that outlives this process, as `vmpod run -d` does: the container's
   * `stdout` and `stderr` are null here; read the output with `container.logs()` from any
   * process. Each output needs a stream port of its own (a free one, no terminal, a new pid
   * namespace; see docs/logs.md); the create fails with InvalidArgumentError otherwise.
   */
  detached?: boolean;
}

/** Where a container comes from: an OCI bundle, a rootfs directory, or the builtin busybox rootfs. */
export interface ContainerConfig extends CallOptions {
  /** Container id, unique in the sandbox (default random). */
  id?: string;
  /** Host path of an OCI bundle (config.json + rootfs), as for `runc run --bundle`. */
  bundle?: string;
  /**
   * Host path of a root filesystem directory, or `builtin` (the default without a bundle):
   * busybox, or the sandbox's `guest.rootfsImage` when it has one; copy-on-write either way.
   */
  rootfs?: string;
  /**
   * An OCI image (an {@link Image}, or a reference such as `oci:/srv/images/app:1.0` opened with
   * the default store): unpacked into the image store where needed, its read-only view shared
   * into the sandbox and a copy-on-write layer of the container's own over it in the guest; its
   * config gives the process (Entrypoint ++ Cmd, Env, WorkingDir, User), `process` overrides it.
   * Not with `bundle` or `rootfs`, nor with `rootfsTransport: 'block'` (docs/images.md).
   */
  image?: Image | string;
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
   * bind into the shared filesystem) or `block` (an ext4 image made with `mkfs.ext4 -d`, hot
   * plugged as a virtio-blk disk; q35 only; writes stay in the image).
   */
  rootfsTransport?: 'virtiofs' | 'block';
  /**
   * The container's log (docs/logs.md): its stdout and stderr are also written, in the CRI log
   * format, to a rotated file in the sandbox's folder, readable with `container.logs()` from any
   * process. Sizes (default: 3 files of 4 MiB at most), or `false` for no log.
   */
  log?: ContainerLogConfig | false;
}

/** Checks `stdio.transport` of a container config. */
export function stdioTransport(stdio: InitStdioOptions | undefined): StdioTransport {
  const transport = stdio?.transport ?? 'auto';
  if (transport !== 'auto' && transport !== 'agent') throw new InvalidArgumentError('stdio.transport', 'must be "auto" or "agent"');
  return transport;
}

/** The running boot and this process's connection to its guest, as the manager needs them. */
export interface GuestSession {
  readonly agent: AgentClient;
  readonly guestStateDir: string;
  readonly bootDir: string;
  /** What every record change of the operation checks (the boot is still the one running). */
  readonly contextOptions: ContextOptions;
  /** The hypervisor's control channel (connected on demand: only a block rootfs needs it). */
  vm(): Promise<VirtualMachine>;
}

/** What the manager needs of its sandbox. */
export interface ContainerSandbox {
  readonly id: string;
  readonly label: string;
  readonly dir: string;
  readonly journal: Journal;
  readonly resources: ResourceManager;
  /** The running boot's guest session (throws InvalidStateError naming `action` unless the sandbox runs). */
  session(options?: CallOptions, action?: string): Promise<GuestSession>;
}

/** A created container's init: its pid and stdio streams. */
export interface CreatedContainer {
  id: string;
  pid: number;
  stdio: { stdin: Writable | null; stdout: Readable | null; stderr: Readable | null };
}

/** What a create has checked before touching anything. */
interface Plan {
  id: string;
  spec: OciSpec;
  hostRootfs: string | undefined;
  /** The image it runs (its view is `hostRootfs`), holding the store's lock until the entry names it. */
  image?: PreparedImage | undefined;
  shares: { index: number; source: string; readOnly: boolean }[];
  volumes: ContainerVolume[];
  transport: 'virtiofs' | 'block';
  stdio: Required<StdioOptions>;
  stdioVia: StdioTransport;
  /** The log's sizes, undefined for no log. */
  log: ResolvedLogConfig | undefined;
  /** The outputs go to a detached log writer. */
  detached: boolean;
}

function share(resources: ResourceManager, record: SandboxRecord, options: ContextOptions): Share {
  const found = resources.shareOf(record, options);
  if (!found) throw new InvalidArgumentError('sharedFs', 'this sandbox has no shared filesystem: only the builtin rootfs can be used');
  return found;
}

export class ContainerManager {
  constructor(private readonly sandbox: ContainerSandbox) {}

  /** Checks a container config; nothing is touched. */
  async plan(options: ContainerConfig, config: SandboxRecord['config']): Promise<Plan> {
    const id = options.id === undefined ? `c-${randomBytes(4).toString('hex')}` : validate.id(options.id, 'id');
    const overrides = checkOverrides(options.process ?? {});
    const volumes = checkContainerVolumes(options.volumes);
    const transport = options.rootfsTransport ?? 'virtiofs';
    const stdioVia = stdioTransport(options.stdio);
    if (transport !== 'virtiofs' && transport !== 'block') throw new InvalidArgumentError('rootfsTransport', 'must be "virtiofs" or "block"');
    if (options.bundle !== undefined && options.rootfs !== undefined) throw new InvalidArgumentError('rootfs', 'give either a bundle or a rootfs, not both');
    if (options.image !== undefined) {
      if (options.bundle !== undefined || options.rootfs !== undefined) throw new InvalidArgumentError('image', 'give an image, a bundle or a rootfs, not several');
      // The view is an overlayfs shared by every container of the image: it has no place in an ext4 image of its own.
      if (transport === 'block') throw new InvalidArgumentError('rootfsTransport', 'an image container\'s rootfs travels by virtio-fs only (its layers are shared, copy-on-write in the guest)');
      if (!(options.image instanceof Image) && typeof options.image !== 'string') throw new InvalidArgumentError('image', 'must be an Image or an image reference');
      if (!config.sharedFs) throw new InvalidArgumentError('sharedFs', 'this sandbox has no shared filesystem: only the builtin rootfs can be used');
      // An idmapped share cannot bind an overlayfs (the kernel refuses idmapped overlayfs mounts): say so before anything is unpacked.
      if (config.sharedFsUser) throw new InvalidArgumentError('image', 'a sandbox with sharedFsUser (an idmapped share) cannot share an image\'s overlayfs view');
    }
    if (options.hostname !== undefined && !/^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})$/u.test(options.hostname)) {
      throw new InvalidArgumentError('hostname', `${JSON.stringify(options.hostname)} is not a valid hostname`);
    }
    let spec: OciSpec;
    let hostRootfs: string | undefined;
    let image: PreparedImage | undefined;
    if (options.image !== undefined) {
      image = await prepareImage(options.image, options.signal);
      try {
        spec = applyOverrides(image.spec, overrides);
      } catch (error) {
        await image.release();
        throw error;
      }
      hostRootfs = image.view;
    } else if (options.bundle !== undefined) {
      const bundle = await readBundle(options.bundle);
      spec = applyOverrides(bundle.spec, overrides);
      hostRootfs = bundle.rootfs;
    } else {
      if (options.rootfs !== undefined && options.rootfs !== 'builtin') {
        hostRootfs = validate.absolutePath(options.rootfs, 'rootfs');
        if (!(await fs.stat(hostRootfs).catch(() => undefined))?.isDirectory()) throw new InvalidArgumentError('rootfs', `${hostRootfs} is not a directory`);
      }
      spec = applyOverrides(defaultSpec({ args: ['/bin/sh'], hostname: id, terminal: overrides.terminal ?? false }), overrides);
    }
    try {
      return this.#planRest(options, config, { id, spec, hostRootfs, image, volumes, transport, stdioVia });
    } catch (error) {
      await image?.release();
      throw error;
    }
  }

  #planRest(
    options: ContainerConfig,
    config: SandboxRecord['config'],
    { id, spec, hostRootfs, image, volumes, transport, stdioVia }: Pick<Plan, 'id' | 'spec' | 'hostRootfs' | 'image' | 'volumes' | 'transport' | 'stdioVia'>,
  ): Plan {
    if (options.hostname !== undefined) spec.hostname = options.hostname;
    const adapted = adaptSpecForGuest(spec);
    if (((hostRootfs !== undefined && transport === 'virtiofs') || adapted.shares.length > 0) && !config.sharedFs) {
      throw new InvalidArgumentError('sharedFs', 'this sandbox has no shared filesystem: only the builtin rootfs can be used');
    }
    const terminal = adapted.spec.process.terminal ?? false;
    const log = options.log === false ? undefined : resolveLogConfig(options.log);
    const detached = options.stdio?.detached === true;
    if (detached) {
      const why = !log
        ? 'there is no log to write the output to (log: false)'
        : terminal
          ? 'a terminal has one output that travels through the agent, not on a stream port'
          : stdioVia === 'agent'
            ? 'stdio.transport "agent" takes no stream port'
            : adapted.spec.linux?.namespaces?.some((ns) => ns.type === 'pid' && ns.path !== undefined)
              ? 'the container joins an existing pid namespace: its output cannot take a stream port'
              : undefined;
      if (why) throw new InvalidArgumentError('stdio.detached', why);
    }
    return { id, spec: adapted.spec, hostRootfs, ...(image ? { image } : {}), shares: adapted.shares, volumes, transport, stdio: normaliseStdio(options.stdio, terminal), stdioVia, log, detached };
  }

  /** Creates a container in the running sandbox (see the module's description). */
  async create(options: ContainerConfig, config: SandboxRecord['config']): Promise<CreatedContainer> {
    const plan = await this.plan(options, config);
    try {
      return await this.#create(plan, options);
    } finally {
      await plan.image?.release();
    }
  }

  async #create(plan: Plan, options: ContainerConfig): Promise<CreatedContainer> {
    const call = { ...(options.signal ? { signal: options.signal } : {}), ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }) };
    const session = await this.sandbox.session(call, 'creating a container');
    const owner = newOwner();
    await this.#reserve(plan.id, owner, session, call);
    let claims: PortClaim[] = [];
    const streams: DirectStreamReadable[] = [];
    try {
      const prepared = await this.#prepareHost(plan, owner, session, await this.#liveIfPortsShort(plan, session));
      // The entry names the image now: the store's removals see it in use.
      await plan.image?.release();
      claims = prepared.claims;
      let rootfs = prepared.rootfs;
      if (plan.hostRootfs !== undefined && plan.transport === 'block') rootfs = await this.#blockRootfs(plan, session, call);
      return await this.#createInGuest(plan, owner, session, rootfs, prepared.overlay, claims, streams, call);
    } catch (error) {
      for (const stream of streams) stream.destroy();
      for (const c of claims) await c.lock.release();
      await this.#undo(plan.id, owner, session).catch((cleanup: unknown) => Object.assign(error as Error, { cleanupError: cleanup }));
      throw error;
    }
  }

  /** Records container `id` as being created by `owner`; an entry a crashed process left is undone first. */
  async #reserve(id: string, owner: Owner, session: GuestSession, call: CallOptions): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const stale = await this.sandbox.journal.transact((tx) => {
        session.contextOptions.guard?.(tx.record);
        const entry = tx.record.containers[id];
        if (entry === undefined) {
          tx.record.containers[id] = { status: 'creating', boot: session.contextOptions.boot!.id, owner, binds: [] };
          return undefined;
        }
        // Another create or delete of this id is under way, or done: leave it alone.
        if (entry.status === 'created' || ownerAlive(entry.owner) || attempt > 0) throw new AlreadyExistsError('container', id);
        return entry; // its process died mid-way
      }, call.signal ? { signal: call.signal } : {});
      if (!stale) return;
      await this.#undo(id, stale.owner, session);
    }
  }

  /**
   * When the record's stream ports look all taken, the containers the agent has (asked before the
   * lock is taken): a claim of a container the agent no longer has (deleted behind the host's back,
   * or by a process that died before it could update the record) is free.
   */
  async #liveIfPortsShort(plan: Plan, session: GuestSession): Promise<ReadonlySet<string> | undefined> {
    const wanted = this.#directCandidates(plan, session).length;
    if (wanted === 0) return undefined;
    const record = await this.sandbox.journal.read();
    const claimed = Object.keys((record.resources[STREAM_PORTS_KIND] as StreamPortsState | undefined)?.ports ?? {}).length;
    if ((record.config.streamPorts ?? 0) - claimed >= wanted) return undefined;
    const agentHas = (await session.agent.listContainers()).map((c) => c.id);
    const underWay = Object.entries(record.containers).filter(([, e]) => e.status !== 'created').map(([id]) => id);
    return new Set([...agentHas, ...underWay, plan.id]);
  }

  /** The host side of a create, recorded in the container's entry as it is made (one transaction). */
  async #prepareHost(plan: Plan, owner: Owner, session: GuestSession, live: ReadonlySet<string> | undefined): Promise<{ rootfs: string; overlay: boolean; claims: PortClaim[] }> {
    const { resources, journal, dir } = this.sandbox;
    const options = session.contextOptions;
    return journal.transact(async (tx) => {
      const entry = this.#mine(tx, plan.id, owner);
      const guestShared = guestSharedDir(session.guestStateDir);
      // The volumes it mounts (checked against the record before anything else is made).
      const guestPages = tx.record.config.hugepages?.guestPages ?? 0;
      const volumeMounts = containerMounts(tx.record.resources[VOLUMES_KIND], plan.volumes, plan.spec, guestPages);
      plan.spec.mounts!.push(...volumeMounts);
      if (plan.image) {
        entry.image = { chainId: plan.image.chainId, store: plan.image.store };
        await tx.save();
      }
      if (plan.hostRootfs !== undefined && plan.image === undefined && plan.transport === 'virtiofs' && plan.spec.root?.readonly === true) {
        await makeMountPoints(plan.hostRootfs, ...(await readOnlyRootMountPoints(plan, tx.record.config.network !== undefined)));
      }
      let rootfs = 'builtin';
      // The user's rootfs image replaces the builtin rootfs: copy-on-write over its mount.
      // An image's view is read-only and shared: the container writes to a layer of its own over it.
      const overlay = plan.image !== undefined || (plan.hostRootfs === undefined && tx.record.config.guest.rootfsImage !== undefined);
      if (overlay && plan.image === undefined) rootfs = guestRootfsImageDir(session.guestStateDir);
      if (plan.hostRootfs !== undefined && plan.transport === 'virtiofs') {
        rootfs = `${guestShared}/${await this.#acquireRootfs(tx, entry, plan, session)}`;
        // An image's root is a folder of its shared view (the guest's overlayfs refuses the share's submount point itself).
        if (plan.image) rootfs = `${rootfs}/${plan.image.root}`;
      }
      for (const s of plan.shares) {
        const bound = await share(resources, tx.record, options).bind({ top: 'mounts', prefix: `${plan.id}-${s.index}`, source: s.source, readOnly: s.readOnly });
        entry.binds.push(bound.name);
        await tx.save();
        plan.spec.mounts![s.index]!.source = `${guestShared}/${bound.path}`;
      }
      // Stream ports for its outputs, when the transport allows it and ports are free.
      const outputs = this.#directCandidates(plan, session);
      let claims: PortClaim[] = [];
      const streamPorts = resources.find<StreamPortsState>(STREAM_PORTS_KIND);
      if (outputs.length > 0 && streamPorts) {
        claims = await resources.context(streamPorts, tx.record, options).update((state) =>
          claimPorts(state, tx.record.config, dir, plan.id, outputs, live ?? new Set(Object.keys(tx.record.containers))),
        );
      }
      return { rootfs, overlay, claims };
    });
  }

  /**
   * Binds a container's rootfs directory into the share, once per source directory and
   * read-only flag (`rootfs/DEV-INO-ro|rw.RANDOM`), for every container that uses it: the guest
   * tells files apart by the mount they come through, so containers of one bundle then share the
   * guest's dentry and page caches. Writes are shared too, as with `runc run` of one bundle twice.
   * Returns the bind's path below the share.
   */
  async #acquireRootfs(tx: Transaction, entry: ContainerEntry, plan: Plan, session: GuestSession): Promise<string> {
    const { resources } = this.sandbox;
    const options = session.contextOptions;
    const readOnly = plan.image !== undefined || plan.spec.root?.readonly === true;
    const stat = await fs.stat(plan.hostRootfs!);
    const key = `${stat.dev.toString(16)}-${stat.ino.toString(16)}-${readOnly ? 'ro' : 'rw'}`;
    const sharedFs = resources.find(SHARED_FS_KIND)!;
    const ctx = resources.context(sharedFs, tx.record, options);
    const existing = await ctx.update((state) => {
      const found = Object.entries((state as { binds: Record<string, { key?: string; users?: string[]; mntId?: number; path: string }> }).binds).find(
        ([, b]) => b.key === key && b.mntId !== undefined,
      );
      if (!found) return undefined;
      found[1].users = [...(found[1].users ?? []), plan.id];
      return { name: found[0], path: found[1].path };
    });
    if (existing) {
      entry.binds.push(existing.name);
      await tx.save();
      return existing.path;
    }
    const bound = await share(resources, tx.record, options).bind({ top: 'rootfs', prefix: key, source: plan.hostRootfs!, readOnly, key, users: [plan.id] });
    entry.binds.push(bound.name);
    await tx.save();
    return bound.path;
  }

  /** A rootfs directory as an ext4 image on a hot-plugged disk; returns its guest path. */
  async #blockRootfs(plan: Plan, session: GuestSession, call: CallOptions): Promise<string> {
    const name = rootfsVolumeName(plan.id);
    const disks = path.join(this.sandbox.dir, 'disks');
    const image = path.join(disks, `${name}.img`);
    await this.sandbox.journal.transact((tx) => {
      const entry = tx.record.containers[plan.id];
      if (entry) entry.rootfsVolume = name;
    });
    await fs.mkdir(disks, { recursive: true, mode: 0o700 });
    await makeRootfsImage(plan.hostRootfs!, image, call.signal);
    const { resources } = this.sandbox;
    const volumes = resources.find<VolumesState>(VOLUMES_KIND)!;
    const record = await this.sandbox.journal.read();
    const ctx = resources.guestContext(volumes, record, session.contextOptions, { agent: session.agent, vm: await session.vm(), guestStateDir: session.guestStateDir });
    const volume = await hotplugVolume(ctx, { kind: 'block', name, source: image, format: 'raw', readOnly: plan.spec.root?.readonly === true }, { container: plan.id, madeFile: image });
    return volume.guestPath!;
  }

  /** The outputs of a container that may take the fast path. */
  #directCandidates(plan: Plan, session: GuestSession): Output[] {
    if (plan.stdioVia === 'agent') return [];
    if (plan.spec.process.terminal === true) return [];
    if (!session.agent.info.features.includes('direct-stdio')) return []; // an older agent in a user's initramfs
    // Only a new pid namespace dies with its init; the agent refuses direct streams otherwise.
    if (plan.spec.linux?.namespaces?.some((ns) => ns.type === 'pid' && ns.path !== undefined)) return [];
    return (['stdout', 'stderr'] as const).filter((fd) => plan.stdio[fd]);
  }

  /**
   * The agent creates the container (stdout and stderr on stream ports where claimed, the rest
   * through the agent); the entry is committed. When the agent finds a port busy (something in
   * the guest still holds it open) the container is created again without stream ports.
   */
  async #createInGuest(
    plan: Plan,
    owner: Owner,
    session: GuestSession,
    rootfs: string,
    overlay: boolean,
    claims: PortClaim[],
    streams: DirectStreamReadable[],
    call: CallOptions,
  ): Promise<CreatedContainer> {
    const direct: Partial<Record<Output, DirectStreamReadable>> = {};
    let writer: ContainerLogWriter | undefined;
    try {
      if (plan.detached) {
        const wanted = (['stdout', 'stderr'] as const).filter((fd) => plan.stdio[fd]);
        if (claims.length < wanted.length) {
          const why = !session.agent.info.features.includes('direct-stdio')
            ? "the guest's agent has no stream ports (no direct-stdio feature: an initramfs of an older vmpod)"
            : `each output needs a free stream port: ${wanted.length} wanted, ${claims.length} free (see streamPorts)`;
          throw new InvalidArgumentError('stdio.detached', why);
        }
        if (claims.length > 0) {
          const logger = await spawnCriLogger(this.sandbox.id, this.sandbox.dir, plan.id, plan.log!, session.bootDir, claims, call.signal);
          await this.sandbox.journal.transact((tx) => void (this.#mine(tx, plan.id, owner).logger = logger));
          // The writer holds the ports' locks through the descriptors it inherited: this process lets go of its own.
          for (const c of claims) await c.lock.release();
        }
      } else {
        for (const c of claims) {
          const stream = await openClaim(session.bootDir, plan.id, c, call.signal);
          streams.push(stream);
          direct[c.fd] = stream;
        }
        if (plan.log && (plan.stdio.stdout || plan.stdio.stderr)) writer = await ContainerLogWriter.open(this.sandbox.dir, plan.id, plan.log);
      }
      const created = await this.#createWithPorts(plan, owner, session, rootfs, overlay, claims, streams, direct, call);
      if (writer) {
        if (created.stdio.stdout) writer.tee('stdout', created.stdio.stdout);
        if (created.stdio.stderr) writer.tee('stderr', created.stdio.stderr);
        if (!created.stdio.stdout && !created.stdio.stderr) await writer.close();
      }
      return created;
    } catch (error) {
      await writer?.close();
      throw error;
    }
  }

  /** {@link #createInGuest} once the outputs' readers are in place. */
  async #createWithPorts(
    plan: Plan,
    owner: Owner,
    session: GuestSession,
    rootfs: string,
    overlay: boolean,
    claims: PortClaim[],
    streams: DirectStreamReadable[],
    direct: Partial<Record<Output, DirectStreamReadable>>,
    call: CallOptions,
  ): Promise<CreatedContainer> {
    await this.sandbox.journal.transact((tx) => void (this.#mine(tx, plan.id, owner).inGuest = true));
    const base = { id: plan.id, config: plan.spec, rootfs, stdio: plan.stdio, ...(overlay ? { overlay: true } : {}) };
    let pid: number;
    try {
      const ports = Object.fromEntries(claims.map((c) => [c.fd, { port: `${STREAM_PORT_PREFIX}${c.index}`, cookie: c.marker.toString('hex') }]));
      ({ pid } = await session.agent.createContainer(claims.length > 0 ? { ...base, direct: ports } : base, call));
    } catch (error) {
      // A detached output has no other way than its port: the create fails.
      if (!(claims.length > 0 && !plan.detached && error instanceof AgentError && error.agentCode === 'BUSY')) throw error;
      for (const stream of streams.splice(0)) stream.destroy();
      for (const c of claims.splice(0)) await c.lock.release();
      delete direct.stdout;
      delete direct.stderr;
      await this.#releasePorts(plan.id, session);
      ({ pid } = await session.agent.createContainer(base, call));
    }
    const rest = await session.agent.openStdio(
      plan.id,
      { stdin: plan.stdio.stdin, stdout: plan.stdio.stdout && !direct.stdout && !plan.detached, stderr: plan.stdio.stderr && !direct.stderr && !plan.detached },
      call,
    );
    await this.sandbox.journal.transact((tx) => {
      session.contextOptions.guard?.(tx.record);
      const entry = this.#mine(tx, plan.id, owner);
      entry.status = 'created';
      delete entry.owner;
    });
    return { id: plan.id, pid, stdio: { stdin: rest.stdin, stdout: direct.stdout ?? rest.stdout, stderr: direct.stderr ?? rest.stderr } };
  }

  /** The entry of container `id`, which `owner` must hold. */
  #mine(tx: Transaction, id: string, owner: Owner): ContainerEntry {
    const entry = tx.record.containers[id];
    if (!entry || entry.owner?.token !== owner.token) {
      throw new InvalidStateError(`container "${id}" in ${this.sandbox.label}`, entry?.status ?? 'deleted', 'creating', { hint: 'another process deleted it, or the sandbox stopped' });
    }
    return entry;
  }

  async #releasePorts(id: string, session: GuestSession): Promise<void> {
    const { resources, journal } = this.sandbox;
    const streamPorts = resources.find<StreamPortsState>(STREAM_PORTS_KIND);
    if (!streamPorts) return;
    await journal.transact((tx) => resources.context(streamPorts, tx.record, session.contextOptions).update((state) => releaseClaims(state, id)));
  }

  /**
   * Undoes what the create of container `id` by `owner` made: the container in the guest (if the
   * agent was asked for it), its rootfs disk, then its host side and entry. Only that owner's
   * entry is touched.
   */
  async #undo(id: string, owner: Owner | undefined, session: GuestSession): Promise<void> {
    const entry = (await this.sandbox.journal.read()).containers[id];
    if (!entry || entry.owner?.token !== owner?.token) return;
    const steps: [string, () => Promise<unknown>][] = [];
    if (entry.inGuest) steps.push(['the container in the guest', () => session.agent.deleteContainer(id, { force: true }).catch(ignoreNotFound)]);
    if (entry.rootfsVolume !== undefined) steps.push(['its rootfs disk', () => this.#detachRootfsVolume(entry.rootfsVolume!, session)]);
    steps.push(['its host side', () => this.#releaseEntry(id, session.contextOptions, (e) => e.owner?.token === owner?.token)]);
    await runAll(steps, `could not undo container "${id}"`);
  }

  async #detachRootfsVolume(name: string, session: GuestSession): Promise<void> {
    const { resources } = this.sandbox;
    const volumes = resources.find<VolumesState>(VOLUMES_KIND)!;
    const record = await this.sandbox.journal.read();
    if (!(record.resources[VOLUMES_KIND] as VolumesState | undefined)?.volumes?.some((v) => v.spec.name === name)) return;
    const ctx = resources.guestContext(volumes, record, session.contextOptions, { agent: session.agent, vm: await session.vm(), guestStateDir: session.guestStateDir });
    await detachVolume(ctx, name).catch(ignoreNotFound);
  }

  /** Releases the host side of entry `id` (its binds, its ports) and removes it, if `mine` says it is ours to remove. */
  async #releaseEntry(id: string, options: ContextOptions, mine: (entry: ContainerEntry) => boolean): Promise<void> {
    await this.sandbox.journal.transact(async (tx) => {
      const entry = tx.record.containers[id];
      if (!entry || !mine(entry)) return;
      await this.releaseHost(tx, id, options);
    });
  }

  /**
   * Inside a transaction: releases the host side of container `id` (its share binds, each once no
   * other container uses it; its stream ports) and removes its entry. Every step is tried.
   */
  async releaseHost(tx: Transaction, id: string, options: ContextOptions): Promise<void> {
    const { resources } = this.sandbox;
    const entry = tx.record.containers[id];
    if (!entry) return;
    const sharedFs = resources.find(SHARED_FS_KIND);
    const steps: [string, () => Promise<unknown>][] = [];
    for (const name of [...entry.binds].reverse()) {
      steps.push([
        `share bind ${name}`,
        async () => {
          if (!sharedFs) return;
          const ctx = resources.context(sharedFs, tx.record, options);
          const others = await ctx.update((state) => {
            const bind = (state as { binds: Record<string, { users?: string[] }> }).binds[name];
            if (!bind?.users) return 0;
            bind.users = bind.users.filter((u) => u !== id);
            return bind.users.length;
          });
          if (others === 0) await share(resources, tx.record, options).unbind(name);
          entry.binds = entry.binds.filter((b) => b !== name);
          await tx.save();
        },
      ]);
    }
    const streamPorts = resources.find<StreamPortsState>(STREAM_PORTS_KIND);
    if (streamPorts) steps.push(['stream ports', () => resources.context(streamPorts, tx.record, options).update((state) => releaseClaims(state, id))]);
    const logger = entry.logger;
    if (logger) steps.push(['its log writer', () => endLogger(logger)]);
    await runAll(steps, `could not release container "${id}"`);
    delete tx.record.containers[id];
  }

  /**
   * After the agent deleted container `id`: its rootfs disk (guest side, without the lock), then
   * its host side and entry. Called by {@link Container.delete} of any process.
   */
  async release(id: string, options: CallOptions = {}): Promise<void> {
    const session = await this.sandbox.session(options).catch(() => undefined);
    const entry = (await this.sandbox.journal.read()).containers[id];
    if (!entry) return;
    if (!session) {
      // The VM is gone: the stop released everything already, or will.
      return;
    }
    if (entry.status !== 'created' && ownerAlive(entry.owner) && !ownedHere(entry.owner)) {
      throw new InvalidStateError(`container "${id}" in ${this.sandbox.label}`, entry.status, 'deleted', { hint: `another process (pid ${entry.owner!.pid}) is creating or deleting it` });
    }
    if (entry.rootfsVolume !== undefined) await this.#detachRootfsVolume(entry.rootfsVolume, session);
    await this.#releaseEntry(id, session.contextOptions, () => true);
    // Deleted, as with `docker rm`: its log goes too (a stopped sandbox keeps its containers' logs until it is deleted).
    removeLog(this.sandbox.dir, id);
  }
}

/** How long a container's detached log writer may take to write what its container's end left in flight. */
const LOGGER_DRAIN_MS = 1_000;

/** Ends a container's detached log writer: it exits by itself at the end of the output; else it is killed. */
async function endLogger(logger: ProcessIdentity): Promise<void> {
  if (isAlive(logger)) await waitForProcessExit(logger, LOGGER_DRAIN_MS);
  if (isAlive(logger) && !(await terminate(logger, 0))) throw new Error(`the log writer (pid ${logger.pid}) did not die from SIGKILL`);
}

/** How long a detached log writer may take to connect to its ports. */
const LOGGER_READY_MS = 10_000;

/**
 * Starts the detached writer of container `id`'s log (`vmpod-logger --cri`, native/logger): it
 * connects to the claimed ports' sockets and writes what the container writes into them until
 * the end markers. It inherits the ports' locks (flock: held as long as it reads) and learns the
 * markers from its environment. Resolves once it said it is connected.
 */
async function spawnCriLogger(sandboxId: string, sandboxDir: string, id: string, log: ResolvedLogConfig, bootDir: string, claims: readonly PortClaim[], signal?: AbortSignal): Promise<ProcessIdentity> {
  const paths = logPaths(sandboxDir, id);
  makeLogDir(paths);
  const env: NodeJS.ProcessEnv = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' };
  for (const c of claims) env[c.fd === 'stdout' ? 'VMPOD_MARKER_STDOUT' : 'VMPOD_MARKER_STDERR'] = c.marker.toString('hex');
  const args = ['--cri', paths.dir, String(log.maxBytes), String(log.maxFiles), ...claims.map((c) => `${c.fd}=${streamSocket(bootDir, c.index)}`)];
  const [read, write] = native().pipe();
  let logger: ProcessIdentity;
  try {
    logger = await spawnDetached(LOGGER_BINARY, args, { output: { fd: write }, fds: claims.map((c) => c.lock.fd), env, umask: 0o077 });
  } catch (error) {
    native().closeFd(read);
    throw error;
  } finally {
    native().closeFd(write);
  }
  const said = await new Promise<string>((resolve) => {
    const pipe = new net.Socket({ fd: read, readable: true, writable: false });
    let text = '';
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      pipe.destroy();
      resolve(text);
    };
    const timer = setTimeout(done, LOGGER_READY_MS);
    signal?.addEventListener('abort', done, { once: true });
    pipe.on('data', (chunk: Buffer) => {
      text = (text + chunk.toString('utf8')).slice(0, 4096);
      if (text.startsWith('ready\n')) done();
    });
    pipe.on('end', done);
    pipe.on('error', done);
  });
  if (!said.startsWith('ready\n')) {
    await terminate(logger, 0);
    signal?.throwIfAborted();
    throw new SandboxError(sandboxId, `the log writer of container "${id}" did not start: ${printableField(said.trim()) || `no answer within ${LOGGER_READY_MS} ms`}`);
  }
  return { pid: logger.pid, startTime: logger.startTime };
}

function ignoreNotFound(error: unknown): void {
  if (error instanceof NotFoundError || (error instanceof AgentError && error.agentCode === 'NOT_FOUND')) return;
  throw error;
}

/** An image opened (when given as a reference, with the default store) and prepared for a container; the reference's image is closed again. */
async function prepareImage(image: Image | string, signal: AbortSignal | undefined): Promise<PreparedImage> {
  if (image instanceof Image) return image.prepareForContainer(signal);
  await using opened = await Image.open(image, signal ? { signal } : {});
  return opened.prepareForContainer(signal);
}

/**
 * The mount points a read-only rootfs must have before it is shared (runc makes them before it
 * turns the root read-only): every mount of the spec, as a file where a bind's host source is
 * not a directory, and, in a sandbox with a network, the /etc files the agent binds over
 * (resolv.conf, hosts, hostname) where the spec mounts none of its own.
 */
async function readOnlyRootMountPoints(plan: Plan, network: boolean): Promise<[Pick<OciMount, 'destination'>[], OciMount[], Set<string>]> {
  const all = plan.spec.mounts ?? [];
  const files = new Set<string>();
  for (const s of plan.shares) {
    const mount = all[s.index];
    if (mount && !(await fs.stat(s.source).then((st) => st.isDirectory(), () => true))) files.add(mount.destination);
  }
  const wanted: Pick<OciMount, 'destination'>[] = [...all];
  if (network) {
    const own = new Set(all.map((m) => path.posix.normalize(m.destination)));
    for (const name of ['resolv.conf', 'hosts', 'hostname']) {
      const destination = `/etc/${name}`;
      if (own.has(destination)) continue;
      wanted.push({ destination });
      files.add(destination);
    }
  }
  return [wanted, all, files];
}
