/**
 * The `Network` of a sandbox (v1): a network namespace, a veth whose peer lives inside it, a tap
 * inside it for the VM, and tc redirects between peer and tap ("tcfilter"), all up.
 *
 * ```
 *   host namespace          │ sandbox namespace (netns)
 *                           │
 *   veth.name  ◄───veth───► │ peerName (eth0) ◄─tc redirect─► tap (tap0) ◄── fds ── QEMU
 * ```
 *
 * @module
 */
import { closeSync } from 'node:fs';
import { NotFoundError } from '../errors.js';
import * as validate from '../validate.js';
import * as check from './check.js';
import { addVeth, deleteLinkGroup, getLink } from './link.js';
import { createNetns, deleteNetns, openNetns, type Netns } from './netns.js';
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
 */
export class Network implements AsyncDisposable {
  /** The sandbox namespace, open (its links can be handled through it). */
  readonly netns: Netns;
  readonly endpoint: NetworkEndpoint;
  #tapFds: number[];
  #destroyed = false;

  private constructor(netns: Netns, endpoint: NetworkEndpoint, tapFds: number[]) {
    this.netns = netns;
    this.endpoint = endpoint;
    this.#tapFds = tapFds;
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
   * frees the emptied namespace in the background. Idempotent.
   */
  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.closeTapFds();
    const deleted = deleteLinkGroup(this.endpoint.linkGroup, { netns: this.netns }).catch(ignoreNotFound);
    const gone = deleteNetns(this.netns.name as string).catch(ignoreNotFound);
    this.netns.close(); // both requests hold the namespace until they ran
    await Promise.all([deleted, gone]);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.destroy();
  }
}
