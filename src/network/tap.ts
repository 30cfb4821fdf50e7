/**
 * Taps and macvtaps: the host ends of a VM's NICs, with their queue file descriptors.
 *
 * The fds are O_CLOEXEC numbers owned by the caller: hand them to QEMU through `spawn`'s `stdio`
 * array (the child gets them as plain inherited fds, e.g. `-netdev tap,fds=3:4`) or over QMP with
 * SCM_RIGHTS, then close them with `fs.closeSync`.
 *
 * @module
 */
import { closeSync } from 'node:fs';
import { AlreadyExistsError, InvalidArgumentError } from '../errors.js';
import * as validate from '../validate.js';
import * as check from './check.js';
import { addOnLower, deleteLink, linkAttributes, linkErrors, type LinkAttributes, type MacvlanOptions } from './link.js';
import { nsArg, type NetnsOption } from './netns.js';
import { callNative, combineErrorMaps } from '../native-call.js';

/** Queue fds of a tap or macvtap. */
export interface TapDevice {
  name: string;
  index: number;
  /** One fd per queue. */
  fds: number[];
}

/** How the queues of a tap or macvtap are opened. */
export interface QueueOptions {
  /** Number of queues, one fd each (default 1; more than 1 needs `multiQueue`). */
  queues?: number;
  /** Frames carry a virtio_net_hdr (10 bytes) in front: what QEMU's virtio-net wants. */
  vnetHdr?: boolean;
  /** O_NONBLOCK on the fds (QEMU sets it itself; useful when Node reads them). */
  nonBlocking?: boolean;
}

export interface TapOptions extends LinkAttributes, QueueOptions, NetnsOption {
  name: string;
  /** IFF_MULTI_QUEUE (default: queues > 1). QEMU then needs `queues=N`, and a single-queue tap needs it off. */
  multiQueue?: boolean;
  /** Keep the tap when its last fd closes (TUNSETPERSIST; default true, as `ip tuntap add`). */
  persist?: boolean;
  /** `user UID` / `group GID`: who may attach queues without CAP_NET_ADMIN. */
  owner?: { uid?: number; gid?: number };
}

export interface OpenTapOptions extends QueueOptions, NetnsOption {
  multiQueue?: boolean;
}

export interface MacvtapOptions extends MacvlanOptions, QueueOptions {}

export interface OpenMacvtapOptions extends QueueOptions, NetnsOption {
  /** Where the temporary device node is made (default /dev; must allow device nodes). */
  devDir?: string;
}

function closeAll(fds: readonly number[]): void {
  for (const fd of fds) {
    try {
      closeSync(fd);
    } catch {
      // already closed
    }
  }
}

function queues(o: QueueOptions & { multiQueue?: boolean }): { queues: number; multiQueue: boolean } {
  const count = validate.integer(o.queues ?? 1, 'queues', 1, check.MAX_QUEUES);
  const multiQueue = check.boolean(o.multiQueue ?? count > 1, 'multiQueue');
  if (count > 1 && !multiQueue) throw new InvalidArgumentError('queues', `${count} queues need multiQueue`);
  return { queues: count, multiQueue };
}

/**
 * Creates a tap inside a namespace and opens its queues: `ip [-n NS] tuntap add dev NAME mode tap
 * [multi_queue] [vnet_hdr] [user UID] [group GID]`, then `ip link set dev NAME up mtu ...` for the
 * link attributes. The /dev/net/tun fds are opened by a thread inside the namespace (a tun device
 * belongs to its opener's namespace); rtnetlink cannot create taps.
 *
 * @throws {@link AlreadyExistsError} when the name is taken.
 */
export async function createTap(options: TapOptions): Promise<TapDevice> {
  const o = check.options(options, 'options');
  const name = check.newInterfaceName(o.name, 'name');
  const q = queues(o);
  const vnetHdr = check.boolean(o.vnetHdr ?? false, 'vnetHdr');
  const persist = check.boolean(o.persist ?? true, 'persist');
  const nonBlocking = check.boolean(o.nonBlocking ?? false, 'nonBlocking');
  const owner = check.options(o.owner, 'owner');
  const uid = check.optional(owner.uid, (v) => check.u32(v, 'owner.uid'));
  const gid = check.optional(owner.gid, (v) => check.u32(v, 'owner.gid'));
  const attrs = linkAttributes(o, 'options');
  const ns = nsArg(o.netns);
  const setAttrs = Object.values(attrs).some((v) => v !== undefined);

  // Both requests are queued at once: the worker runs them in order without a round trip between.
  const opened = callNative(
    (n) => n.tapOpen(ns, { name, ...q, vnetHdr, persist, owner: uid, group: gid, nonBlocking, exclusive: true }),
    combineErrorMaps((e, system) => (e.syscall === 'TUNSETIFF' && e.code === 'EBUSY' ? new AlreadyExistsError('link', name, { cause: system }) : undefined), linkErrors(name)),
  );
  const set = setAttrs ? callNative((n) => n.linkSet(ns, name, attrs), linkErrors(name)) : Promise.resolve();
  const [tap, done] = await Promise.allSettled([opened, set]);
  if (tap.status === 'rejected') {
    await set.catch(() => undefined);
    throw tap.reason;
  }
  if (done.status === 'rejected') {
    closeAll(tap.value.fds);
    if (persist) await deleteLink(name, { netns: o.netns }).catch(() => undefined);
    throw done.reason;
  }
  return tap.value;
}

/**
 * Opens queues of an existing tap (one made by another tool, or persisted earlier); the flags
 * must match how it was created.
 *
 * @throws {@link NotFoundError} when there is no such link.
 */
export async function openTap(name: string, options?: OpenTapOptions): Promise<TapDevice> {
  const dev = validate.interfaceName(name, 'name');
  const o = check.options(options, 'options');
  const q = queues(o);
  const vnetHdr = check.boolean(o.vnetHdr ?? false, 'vnetHdr');
  const nonBlocking = check.boolean(o.nonBlocking ?? false, 'nonBlocking');
  const ns = nsArg(o.netns);
  return callNative((n) => n.tapOpen(ns, { name: dev, ...q, vnetHdr, nonBlocking, exclusive: false }), linkErrors(dev));
}

/**
 * Opens queues of an existing macvtap: one fd per queue, through a private device node made from
 * the major:minor that sysfs gives for it inside its namespace (`/sys/class/net/NAME/macvtap/tapN/dev`)
 * and unlinked at once. `/dev/tapN` is never used: N is an ifindex, and ifindexes repeat across
 * namespaces. vnet_hdr is on by default, as the kernel opens macvtaps.
 *
 * @throws {@link NotFoundError} when there is no such link.
 */
export async function openMacvtap(name: string, options?: OpenMacvtapOptions): Promise<number[]> {
  const dev = validate.interfaceName(name, 'name');
  const o = check.options(options, 'options');
  const count = validate.integer(o.queues ?? 1, 'queues', 1, check.MAX_QUEUES);
  const vnetHdr = check.boolean(o.vnetHdr ?? true, 'vnetHdr');
  const nonBlocking = check.boolean(o.nonBlocking ?? false, 'nonBlocking');
  const devDir = check.optional(o.devDir, (v) => validate.absolutePath(v, 'devDir'));
  const ns = nsArg(o.netns);
  return callNative((n) => n.macvtapOpen(ns, { name: dev, queues: count, vnetHdr, nonBlocking, devDir }), linkErrors(dev));
}

/**
 * Creates a macvtap on a parent link and opens its queues: `ip [-n NS] link add NAME link LOWER
 * type macvtap mode MODE`, then {@link openMacvtap}. The link is removed again if the fds cannot
 * be opened.
 */
export async function createMacvtap(options: MacvtapOptions): Promise<TapDevice> {
  const o = check.options(options, 'options');
  const name = check.newInterfaceName(o.name, 'name');
  const count = validate.integer(o.queues ?? 1, 'queues', 1, check.MAX_QUEUES);
  const vnetHdr = check.boolean(o.vnetHdr ?? true, 'vnetHdr');
  const nonBlocking = check.boolean(o.nonBlocking ?? false, 'nonBlocking');
  const { queues: _q, vnetHdr: _v, nonBlocking: _n, ...link } = o as MacvtapOptions;
  const where = o.into ?? o.netns;
  const created = addOnLower('macvtap', link);
  const opened = created.then(() => openMacvtap(name, { netns: where, queues: count, vnetHdr, nonBlocking }));
  const [index, fds] = await Promise.allSettled([created, opened]);
  if (index.status === 'rejected') throw index.reason;
  if (fds.status === 'rejected') {
    await deleteLink(name, { netns: where }).catch(() => undefined);
    throw fds.reason;
  }
  return { name, index: index.value, fds: fds.value };
}
