/**
 * The `Network` of a sandbox: a network namespace and the interfaces in it that become the VM's
 * NICs. Two ways to get one:
 *
 * - {@link Network.create} (v1): a new namespace with one veth made by vmpod, its peer inside,
 *   a tap, and tc redirects between them ("tcfilter"), all up, in a few ms:
 *   ```
 *   host namespace          │ sandbox namespace (netns)
 *   veth.name  ◄───veth───► │ peerName (eth0) ◄─tc redirect─► tap (tap0) ◄── fds ── QEMU
 *   ```
 * - {@link Network.open} / {@link Network.resume}: a namespace vmpod creates or adopts, whose
 *   interfaces come from CNI networks ({@link Network.addCni}) and from anyone else (found by a
 *   scan), each plugged into the VM as an endpoint ({@link Network.plug}: veth, macvlan, tap,
 *   macvtap) by an inter-network model (tcfilter, macvtap, bridge, none). Everything is driven by
 *   a JSON {@link NetworkRecord}, saved before every change, so that {@link Network.release} can
 *   remove exactly what vmpod made (and CNI DEL what the plugins made) in any process, even after
 *   the VM or vmpod died.
 *
 * @module
 */
import { throwFailures } from '../cleanup.js';
import { closeSync } from 'node:fs';
import path from 'node:path';
import { InvalidArgumentError, NotFoundError } from '../errors.js';
import * as validate from '../validate.js';
import * as check from './check.js';
import { CniConfig, type JsonObject } from './cni/config.js';
import type { CniResult } from './cni/result.js';
import { CniRuntime } from './cni/runtime.js';
import type { CniDns } from './cni/result.js';
import { createEndpoint, openBackend, undoChanges, type AttachedEndpoint, type EndpointOrigin, type EndpointRecord, type InterNetworkModel } from './endpoints/index.js';
import type { GuestInterface, GuestOverrides } from './guest-config.js';
import { addVeth, deleteLinkGroup, getLink } from './link.js';
import { NETNS_DIR, createNetns, deleteNetns, openNetns, type Netns } from './netns.js';
import { scanNetns, type Interface } from './scan.js';
import { createTap } from './tap.js';
import { connectTcFilter } from './tcfilter.js';

/**
 * The link group (IFLA_GROUP) of the links a {@link Network} creates, on both sides: teardown
 * deletes them in one request, and a scan tells them from links made by others. `ip link show
 * group 30317` lists them.
 */
export const NETWORK_LINK_GROUP = 0x766d;

export interface NetworkOptions {
  /** The namespace to create: `ip netns add NAME`. */
  netns: string;
  veth: {
    /** The host end, in the process's namespace. */
    name: string;
    /** The peer, inside the namespace (default `eth0`). */
    peerName?: string;
    /** MAC of the peer, which the guest NIC will carry (default: random, read back). */
    mac?: string;
    /** MAC of the host end (default: random). */
    hostMac?: string;
    /** MTU of both ends and of the tap (default 1500). */
    mtu?: number;
  };
  tap?: {
    /** Tap name inside the namespace (default `tap0`). */
    name?: string;
    /** Queues, one fd each; more than 1 makes a multi-queue tap (default 1). */
    queues?: number;
    /** virtio_net_hdr on the queues (default true, as QEMU's virtio-net wants). */
    vnetHdr?: boolean;
  };
  /** Link group of the created links (default {@link NETWORK_LINK_GROUP}). */
  linkGroup?: number;
}

/** What a {@link Network} created, by name. */
export interface NetworkEndpoint {
  /** The host end of the veth. */
  hostVeth: string;
  /** The veth peer inside the namespace. */
  peer: string;
  /** The tap inside the namespace. */
  tap: string;
  /** MAC of the peer: the guest NIC takes it over. */
  mac: string;
  mtu: number;
  queues: number;
  vnetHdr: boolean;
  linkGroup: number;
}

/** A CNI attachment of a {@link Network}, recorded before its ADD ran. */
export interface CniAttachmentRecord {
  /** The network's name. */
  network: string;
  /** `CNI_IFNAME`: the interface it makes in the namespace. */
  ifName: string;
  /** The configuration list ADD ran with, so that DEL runs with it even without a cache entry. */
  config: JsonObject;
  args?: [string, string][];
  capabilityArgs?: JsonObject;
  /** False until ADD succeeded. */
  added: boolean;
  /** The DNS settings of its result. */
  dns?: CniDns;
}

/** What CNI CHECK said of one attachment ({@link Network.checkCni}). */
export interface CniCheckOutcome {
  network: string;
  ifName: string;
  /** `failed`: the plugin's error is in `error` (a `CniPluginError` with its code and message). */
  status: 'ok' | 'failed' | 'skipped';
  error?: Error;
  /** Why it was skipped. */
  reason?: string;
}

/** The persisted record of a {@link Network} opened with {@link Network.open}: JSON, saved before every change. */
export interface NetworkRecord {
  format: 1;
  /** The namespace; `created`: vmpod made it and deletes it on release. */
  netns: { path: string; name?: string; created: boolean };
  /** How CNI plugins run for this network (DEL must find the same plugins and cache). */
  cni: { containerId: string; cacheDir: string; pluginDirs: string[]; timeoutMs?: number };
  attachments: CniAttachmentRecord[];
  endpoints: EndpointRecord[];
  /** The next endpoint number (never reused within a network). */
  nextIndex: number;
  /** Link group of the links vmpod creates in the namespace. */
  linkGroup: number;
}

/** Options of {@link Network.open}. */
export interface NetworkOpenOptions {
  /**
   * The namespace: a name under /run/netns or an absolute path. With `create`, a new named
   * namespace (`ip netns add NAME`) that release deletes; otherwise an existing one that is only
   * ever adopted, never deleted.
   */
  netns: string;
  create?: boolean;
  /** `CNI_CONTAINERID` of the attachments (the sandbox id). */
  containerId: string;
  /** Plugin directories searched first (then /opt/cni/bin, /usr/lib/cni). */
  cniPluginDirs?: string[];
  /** The CNI result cache (default /var/lib/vmpod/cni). */
  cniCacheDir?: string;
  /** Limit of each plugin run (default 30 s). */
  cniTimeoutMs?: number;
  /** Link group of the links vmpod creates (default {@link NETWORK_LINK_GROUP}). */
  linkGroup?: number;
  /** Persists the record; called before every change on the host. */
  save?: (record: NetworkRecord) => Promise<void>;
}

/** Options of {@link Network.plug}. */
export interface PlugOptions {
  /** Where the interface came from. */
  origin: EndpointOrigin;
  /** Queues of the NIC: one per vCPU (more than 1 makes a multi-queue tap or macvtap). */
  queues: number;
  /** Inter-network model of a veth or macvlan (default tcfilter). */
  model?: InterNetworkModel | undefined;
  /** Guest addresses, routes, neighbours that replace what the scan found. */
  overrides?: GuestOverrides | undefined;
}

function ignoreNotFound(e: unknown): void {
  if (!(e instanceof NotFoundError)) throw e;
}

function closeFds(fds: readonly number[]): void {
  for (const fd of fds) {
    try {
      closeSync(fd);
    } catch {
      // already closed
    }
  }
}

/**
 * A sandbox network. Create it with {@link Network.create}; {@link Network.destroy} removes all of
 * it (`await using net = await Network.create(...)` does that at the end of the scope).
 *
 * @example
 * ```ts
 * // ip netns add demo; veth-demo on the host, its peer eth0 in demo; tap0 tied to eth0 by tc.
 * await using net = await Network.create({ netns: 'demo', veth: { name: 'veth-demo' }, tap: { queues: 2 } });
 * console.log(net.endpoint.mac, net.tapFds);   // the MAC the guest NIC takes over; the tap's queue fds for QEMU
 * ```
 * A sandbox makes its own network from its config (CNI networks, a scan of its namespace); see
 * `SandboxConfig.network` and examples/vnf-cni.ts.
 */
export class Network implements AsyncDisposable {
  /** The sandbox namespace, open (its links can be handled through it). */
  readonly netns: Netns;
  readonly #endpoint: NetworkEndpoint | undefined;
  #tapFds: number[];
  #destroyed = false;
  readonly #record: NetworkRecord | undefined;
  readonly #save: (record: NetworkRecord) => Promise<void>;

  private constructor(netns: Netns, endpoint: NetworkEndpoint | undefined, tapFds: number[], record?: NetworkRecord, save?: (record: NetworkRecord) => Promise<void>) {
    this.netns = netns;
    this.#endpoint = endpoint;
    this.#tapFds = tapFds;
    this.#record = record;
    this.#save = save ?? (async () => undefined);
  }

  /** What {@link Network.create} made (v1). A network from {@link Network.open} has {@link Network.endpoints} instead. */
  get endpoint(): NetworkEndpoint {
    if (!this.#endpoint) throw new InvalidArgumentError('endpoint', 'this network was opened, not created: see endpoints');
    return this.#endpoint;
  }

  /**
   * Creates the namespace, the veth with its peer directly inside it, the tap, the tc redirects
   * both ways, all links up. Equivalent to:
   * ```
   * ip netns add NS
   * ip link add VETH group G [mtu M] type veth peer name eth0 netns NS group G
   * ip -n NS tuntap add dev tap0 mode tap vnet_hdr [multi_queue]   # fds kept open
   * ip link set VETH up; ip -n NS link set eth0 up; ip -n NS link set tap0 up group G
   * tc -n NS qdisc add dev eth0 ingress; tc -n NS qdisc add dev tap0 ingress
   * tc -n NS filter add dev eth0 parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev tap0
   * tc -n NS filter add dev tap0 parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev eth0
   * ```
   * After the namespace exists, every request is queued at once and runs back to back on the
   * addon's worker thread. On failure everything created is removed again.
   *
   * @throws {@link AlreadyExistsError} when the namespace or the host veth name is taken.
   */
  static async create(options: NetworkOptions): Promise<Network> {
    const o = check.options(options, 'options');
    const name = validate.netnsName(o.netns, 'netns');
    const veth = check.options(o.veth, 'veth');
    const tapOptions = check.options(o.tap, 'tap');
    const hostVeth = check.newInterfaceName(veth.name, 'veth.name');
    const peer = check.newInterfaceName(veth.peerName ?? 'eth0', 'veth.peerName');
    const tap = check.newInterfaceName(tapOptions.name ?? 'tap0', 'tap.name');
    check.distinct({ 'veth.peerName': peer, 'tap.name': tap });
    const mac = check.optional(veth.mac, (v) => check.unicastMac(v, 'veth.mac'));
    const hostMac = check.optional(veth.hostMac, (v) => check.unicastMac(v, 'veth.hostMac'));
    const mtu = check.optional(veth.mtu, (v) => check.mtu(v, 'veth.mtu'));
    const queues = validate.integer(tapOptions.queues ?? 1, 'tap.queues', 1, check.MAX_QUEUES);
    const vnetHdr = check.boolean(tapOptions.vnetHdr ?? true, 'tap.vnetHdr');
    const group = check.u32(o.linkGroup ?? NETWORK_LINK_GROUP, 'linkGroup', 1);

    const netns = await createNetns(name);
    const steps = [
      addVeth({
        name: hostVeth,
        up: true,
        group,
        ...(mtu === undefined ? {} : { mtu }),
        ...(hostMac === undefined ? {} : { mac: hostMac }),
        peer: { name: peer, netns, up: true, group, ...(mac === undefined ? {} : { mac }) },
      }),
      createTap({ name: tap, netns, queues, vnetHdr, persist: true, up: true, group, ...(mtu === undefined ? {} : { mtu }) }),
      connectTcFilter(peer, tap, { netns }),
      getLink(peer, { netns }),
    ] as const;
    const [vethResult, tapResult, tcResult, peerResult] = await Promise.allSettled(steps);
    if (vethResult.status === 'fulfilled' && tapResult.status === 'fulfilled' && tcResult.status === 'fulfilled' && peerResult.status === 'fulfilled') {
      const endpoint: NetworkEndpoint = { hostVeth, peer, tap, mac: peerResult.value.mac, mtu: peerResult.value.mtu, queues, vnetHdr, linkGroup: group };
      return new Network(netns, endpoint, tapResult.value.fds);
    }
    if (tapResult.status === 'fulfilled') closeFds(tapResult.value.fds);
    // The peer and the tap are in the group inside the namespace; deleting the peer takes the
    // host end along. A host name that was already taken is someone else's and stays.
    await Promise.allSettled([deleteLinkGroup(group, { netns }), deleteNetns(name)]);
    netns.close();
    const failure = [vethResult, tapResult, tcResult, peerResult].find((r): r is PromiseRejectedResult => r.status === 'rejected');
    throw failure?.reason;
  }

  /**
   * Removes what {@link Network.create} made for a namespace, by name: for a cleanup pass after a
   * crash, when no `Network` object is left. Idempotent.
   */
  static async teardown(netns: string, options?: { linkGroup?: number }): Promise<void> {
    const name = validate.netnsName(netns, 'netns');
    const group = check.u32(check.options(options, 'options').linkGroup ?? NETWORK_LINK_GROUP, 'linkGroup', 1);
    let handle: Netns | undefined;
    try {
      handle = await openNetns(name);
    } catch (e) {
      ignoreNotFound(e);
      return;
    }
    const deleted = deleteLinkGroup(group, { netns: handle }).catch(ignoreNotFound);
    const gone = deleteNetns(name).catch(ignoreNotFound);
    handle.close();
    await Promise.all([deleted, gone]);
  }

  // --- Networks driven by a record: open, CNI, endpoints, release. ---------------------------

  /**
   * Opens a sandbox's network: creates the namespace (`create`, `ip netns add NAME`) or adopts
   * an existing one, and starts its record. Nothing else is made until {@link addCni} or
   * {@link plug}.
   *
   * @throws {@link AlreadyExistsError} when `create` and the name is taken; {@link NotFoundError}
   *   when an adopted namespace does not exist.
   */
  static async open(options: NetworkOpenOptions): Promise<Network> {
    const o = check.options(options, 'options');
    const ref = o.netns as string;
    const create = check.boolean(o.create ?? false, 'create');
    if (create) validate.netnsName(ref, 'netns');
    const containerId = validate.id(o.containerId, 'containerId');
    const cni = new CniRuntime({
      ...(o.cniPluginDirs === undefined ? {} : { pluginDirs: o.cniPluginDirs }),
      ...(o.cniCacheDir === undefined ? {} : { cacheDir: o.cniCacheDir }),
      ...(o.cniTimeoutMs === undefined ? {} : { timeoutMs: o.cniTimeoutMs }),
    });
    const named = !ref.startsWith('/');
    const record: NetworkRecord = {
      format: 1,
      netns: { path: named ? path.join(NETNS_DIR, validate.netnsName(ref, 'netns')) : validate.absolutePath(ref, 'netns'), created: create },
      cni: { containerId, cacheDir: cni.cacheDir, pluginDirs: o.cniPluginDirs ? [...o.cniPluginDirs] : [], ...(o.cniTimeoutMs === undefined ? {} : { timeoutMs: cni.timeoutMs }) },
      attachments: [],
      endpoints: [],
      nextIndex: 0,
      linkGroup: check.u32(o.linkGroup ?? NETWORK_LINK_GROUP, 'linkGroup', 1),
    };
    if (named) record.netns.name = ref;
    const save = o.save ?? (async () => undefined);
    // Recorded first: a crash right after the namespace appears still removes it.
    await save(record);
    let netns: Netns;
    try {
      netns = create ? await createNetns(ref) : await openNetns(ref);
    } catch (error) {
      record.netns.created = false; // never delete a namespace that was someone else's
      await save(record);
      throw error;
    }
    return new Network(netns, undefined, [], record, save);
  }

  /** Takes up a network from its record (another process, a new boot of the VM). */
  static async resume(record: NetworkRecord, save?: (record: NetworkRecord) => Promise<void>): Promise<Network> {
    const r = checkRecord(record);
    const netns = await openNetns(r.netns.path);
    return new Network(netns, undefined, [], r, save);
  }

  /** The record (live: it changes with the network). */
  get record(): NetworkRecord {
    return this.#v2();
  }

  /** The endpoints plugged (or being plugged) into the VM. */
  get endpoints(): readonly EndpointRecord[] {
    return this.#v2().endpoints;
  }

  #v2(): NetworkRecord {
    if (!this.#record) throw new InvalidArgumentError('network', 'this network was made by Network.create (v1): it has no record');
    return this.#record;
  }

  #cni(): CniRuntime {
    const c = this.#v2().cni;
    return new CniRuntime({ pluginDirs: c.pluginDirs, cacheDir: c.cacheDir, ...(c.timeoutMs === undefined ? {} : { timeoutMs: c.timeoutMs }) });
  }

  /**
   * Adds the namespace to a CNI network: `cnitool add NET /run/netns/NS` with `CNI_IFNAME`.
   * The attachment is recorded before ADD runs; a failed ADD is undone by the CNI runtime (DEL
   * over the chain) and forgotten, and its typed error thrown (`CniPluginError` with the
   * plugin's code and message, ...).
   */
  async addCni(
    network: CniConfig,
    options: { ifName: string; args?: [string, string][]; capabilityArgs?: JsonObject; signal?: AbortSignal },
  ): Promise<CniResult> {
    const record = this.#v2();
    const ifName = validate.interfaceName(options.ifName, 'ifName');
    const known = record.attachments.find((a) => a.ifName === ifName) ?? record.endpoints.find((e) => e.name === ifName);
    if (known) throw new InvalidArgumentError('ifName', `"${ifName}" is already an interface of this sandbox's network`);
    const attachment: CniAttachmentRecord = { network: network.name, ifName, config: network.toJSON(), added: false };
    if (options.args) attachment.args = options.args.map(([k, v]) => [k, v]);
    if (options.capabilityArgs) attachment.capabilityArgs = options.capabilityArgs;
    record.attachments.push(attachment);
    await this.#save(record);
    try {
      const result = await this.#cni().add(
        network,
        {
          containerId: record.cni.containerId,
          netns: record.netns.path,
          ifName,
          ...(attachment.args ? { args: attachment.args } : {}),
          ...(attachment.capabilityArgs ? { capabilityArgs: attachment.capabilityArgs } : {}),
        },
        options.signal ? { signal: options.signal } : {},
      );
      attachment.added = true;
      if (Object.keys(result.dns).length > 0) attachment.dns = structuredClone(result.dns) as CniDns;
      await this.#save(record);
      return result;
    } catch (error) {
      record.attachments = record.attachments.filter((a) => a !== attachment);
      await this.#save(record);
      throw error;
    }
  }

  /** Removes a CNI attachment: `cnitool del NET /run/netns/NS` (DEL over the chain, from its config and cache). */
  /**
   * Runs CNI CHECK for each attachment (or the one of `ifName`) with the result of its ADD,
   * as `cnitool check` would: the plugins verify that what they made is still there. An
   * interface the bridge model gave another MAC is skipped (its plugin would compare the MAC
   * with its result). Never throws for a plugin's verdict: each outcome is in the list.
   */
  async checkCni(ifName?: string): Promise<CniCheckOutcome[]> {
    const record = this.#v2();
    const attachments = record.attachments.filter((a) => a.added && (ifName === undefined || a.ifName === ifName));
    if (ifName !== undefined && attachments.length === 0) throw new NotFoundError('CNI attachment', ifName);
    const outcomes: CniCheckOutcome[] = [];
    for (const attachment of attachments) {
      const base = { network: attachment.network, ifName: attachment.ifName };
      const endpoint = record.endpoints.find((e) => e.name === attachment.ifName);
      if (endpoint?.changes.some((c) => c.type === 'mac')) {
        outcomes.push({ ...base, status: 'skipped', reason: `the ${endpoint.model} model gave ${attachment.ifName} another MAC than the plugin's result` });
        continue;
      }
      try {
        await this.#cni().check(CniConfig.fromObject(attachment.config), attachmentArgs(record, attachment));
        outcomes.push({ ...base, status: 'ok' });
      } catch (error) {
        outcomes.push({ ...base, status: 'failed', error: error as Error });
      }
    }
    return outcomes;
  }

  async removeCni(ifName: string): Promise<void> {
    const record = this.#v2();
    const attachment = record.attachments.find((a) => a.ifName === ifName);
    if (!attachment) throw new NotFoundError('CNI attachment', ifName);
    await cniDel(this.#cni(), record, attachment);
    record.attachments = record.attachments.filter((a) => a !== attachment);
    await this.#save(record);
  }

  /**
   * Plugs an interface of the namespace into the VM as an endpoint of its kind: makes what its
   * model needs (each change recorded first) and returns the record and the queue fds for the
   * hypervisor (close them once it has its copies). On failure what was made is undone.
   *
   * @throws {@link NotFoundError} when the namespace has no such interface;
   *   {@link InvalidArgumentError} for a kind vmpod does not plug or a model it does not take.
   */
  async plug(name: string, options: PlugOptions, interfaces?: readonly Interface[]): Promise<AttachedEndpoint> {
    const record = this.#v2();
    validate.interfaceName(name, 'name');
    if (record.endpoints.some((e) => e.name === name)) throw new InvalidArgumentError('name', `"${name}" is already plugged into the VM`);
    const iface = (interfaces ?? (await this.scan())).find((i) => i.name === name);
    if (!iface) throw new NotFoundError('interface', `${name} (in ${record.netns.path})`);
    const endpoint = createEndpoint(iface, {
      index: record.nextIndex,
      origin: options.origin,
      queues: validate.integer(options.queues, 'queues', 1, check.MAX_QUEUES),
      model: options.model,
      overrides: options.overrides,
    });
    record.nextIndex += 1;
    const saved = endpoint.save();
    record.endpoints.push(saved);
    await this.#save(record);
    try {
      return await endpoint.attach({ netns: this.netns, linkGroup: record.linkGroup, save: async () => this.#save(record) });
    } catch (error) {
      await undoChanges(this.netns, saved.changes).catch(() => undefined);
      record.endpoints = record.endpoints.filter((e) => e !== saved);
      await this.#save(record);
      throw error;
    }
  }

  /** Opens the queue fds of a plugged endpoint again (a new boot of the VM). */
  async reopen(name: string): Promise<number[]> {
    const endpoint = this.#endpointRecord(name);
    return openBackend(this.netns, endpoint.backend);
  }

  /** Marks an endpoint's NIC as in the VM (or not), persisted. */
  async setPlugged(name: string, plugged: boolean): Promise<void> {
    this.#endpointRecord(name).plugged = plugged;
    await this.#save(this.#v2());
  }

  /** Records what the guest now has on an endpoint's interface (after a rescan found changes). */
  async setGuest(name: string, guest: GuestInterface): Promise<void> {
    this.#endpointRecord(name).guest = guest;
    await this.#save(this.#v2());
  }

  /** Undoes what {@link plug} made for an interface, and forgets the endpoint. */
  async unplug(name: string): Promise<void> {
    const record = this.#v2();
    const endpoint = this.#endpointRecord(name);
    await undoChanges(this.netns, endpoint.changes);
    record.endpoints = record.endpoints.filter((e) => e !== endpoint);
    await this.#save(record);
  }

  #endpointRecord(name: string): EndpointRecord {
    const endpoint = this.#v2().endpoints.find((e) => e.name === name);
    if (!endpoint) throw new NotFoundError('endpoint', name);
    return endpoint;
  }

  /** Closes the handle on the namespace (the network stays as it is). */
  close(): void {
    this.netns.close();
  }

  /**
   * Removes what a network's record names, in any process: every endpoint's changes undone
   * (last first), CNI DEL of every attachment (reverse order, from the recorded configuration,
   * so it runs even when the cache or the VM is gone), then the namespace if vmpod created it
   * (in which case the endpoints' links, all inside it, go with it instead of one by one).
   * Every step is tried; the failures are thrown at the end (one as it is, several in a
   * CleanupError). Idempotent.
   */
  static async release(record: NetworkRecord, options: { save?: (record: NetworkRecord) => Promise<void> } = {}): Promise<void> {
    const r = checkRecord(record);
    const save = options.save ?? (async () => undefined);
    const failures: unknown[] = [];
    const attempt = async (step: () => Promise<void>): Promise<void> => {
      try {
        await step();
      } catch (error) {
        failures.push(error);
      }
    };
    const undoEndpoints = async (): Promise<void> => {
      let netns: Netns | undefined;
      await attempt(async () => {
        netns = await openNetns(r.netns.path).catch((error: unknown) => {
          if (error instanceof NotFoundError) return undefined;
          throw error;
        });
      });
      for (const endpoint of [...r.endpoints].reverse()) {
        await attempt(async () => {
          if (netns) await undoChanges(netns, endpoint.changes);
          r.endpoints = r.endpoints.filter((e) => e !== endpoint);
          await save(r);
        });
      }
      netns?.close();
    };
    // Everything vmpod makes lives inside the namespace: when vmpod made the namespace too,
    // deleting it removes them in the kernel's own time, once CNI DEL has run.
    const whole = r.netns.created && r.netns.name !== undefined;
    if (!whole) await undoEndpoints();
    const cni = new CniRuntime({ pluginDirs: r.cni.pluginDirs, cacheDir: r.cni.cacheDir, ...(r.cni.timeoutMs === undefined ? {} : { timeoutMs: r.cni.timeoutMs }) });
    for (const attachment of [...r.attachments].reverse()) {
      await attempt(async () => {
        await cniDel(cni, r, attachment);
        r.attachments = r.attachments.filter((a) => a !== attachment);
        await save(r);
      });
    }
    if (whole && r.attachments.length === 0) {
      await attempt(async () => {
        await deleteNetns(r.netns.name as string).catch(ignoreNotFound);
        r.endpoints = [];
        r.netns.created = false;
        await save(r);
      });
    } else if (whole) {
      await undoEndpoints(); // the namespace stays until its CNI DEL succeeds: leave only that
    }
    throwFailures(failures, `could not release the network of namespace ${r.netns.path}`);
  }

  /** The tap's queue fds (O_CLOEXEC), to pass to QEMU; empty once closed. */
  get tapFds(): readonly number[] {
    return this.#tapFds;
  }

  /** Closes this process's copies of the tap fds (e.g. once QEMU has its own). The tap persists. */
  closeTapFds(): void {
    closeFds(this.#tapFds);
    this.#tapFds = [];
  }

  get destroyed(): boolean {
    return this.#destroyed;
  }

  /**
   * The interfaces of the namespace with their addresses and routes (see `scanNetns`), including
   * any made by others since.
   */
  async scan(): Promise<Interface[]> {
    return scanNetns(this.netns);
  }

  /**
   * Removes everything: `ip -n NS link delete group G` (peer, host end and tap in one request,
   * one RCU grace period), then `ip netns delete NS`. Returns once the links are gone; the kernel
   * frees the emptied namespace in the background. Idempotent. For an opened network: {@link
   * Network.release} of its record.
   */
  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.closeTapFds();
    if (this.#record) {
      this.netns.close();
      await Network.release(this.#record, { save: this.#save });
      return;
    }
    const deleted = deleteLinkGroup(this.endpoint.linkGroup, { netns: this.netns }).catch(ignoreNotFound);
    const gone = deleteNetns(this.netns.name as string).catch(ignoreNotFound);
    this.netns.close(); // both requests hold the namespace until they ran
    await Promise.all([deleted, gone]);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.destroy();
  }
}

/** DEL of one attachment, from its recorded configuration (and the cache, for prevResult). */
/** The runtime arguments of an attachment, as ADD had them. */
function attachmentArgs(record: NetworkRecord, attachment: CniAttachmentRecord) {
  return {
    containerId: record.cni.containerId,
    ifName: attachment.ifName,
    netns: record.netns.path,
    ...(attachment.args ? { args: attachment.args } : {}),
    ...(attachment.capabilityArgs ? { capabilityArgs: attachment.capabilityArgs } : {}),
  };
}

async function cniDel(cni: CniRuntime, record: NetworkRecord, attachment: CniAttachmentRecord): Promise<void> {
  await cni.del(CniConfig.fromObject(attachment.config), attachmentArgs(record, attachment));
}

/** Checks the shape of a record read back from disk (our own file, but maybe truncated or old). */
function checkRecord(record: NetworkRecord): NetworkRecord {
  const ok =
    typeof record === 'object' &&
    record !== null &&
    record.format === 1 &&
    typeof record.netns?.path === 'string' &&
    typeof record.cni?.containerId === 'string' &&
    Array.isArray(record.attachments) &&
    Array.isArray(record.endpoints) &&
    Number.isInteger(record.nextIndex);
  if (!ok) throw new InvalidArgumentError('record', 'is not a network record written by this vmpod');
  return record;
}

