/**
 * A sandbox's network as a {@link SandboxResource}, and its hotplug operations.
 *
 * - `prepare` (first boot): the namespace (`vmpod-ID`, or the one the config adopts), CNI ADD
 *   of each network, a scan of the namespace, and each interface plugged as an endpoint whose
 *   queue fds become a `virtio-net` device (MAC, MTU and queues of the endpoint). Later boots
 *   reopen the queues of what is there: the addresses stay.
 * - `attach`: the agent mirrors the namespace in the guest (NICs by MAC: name, MTU, addresses,
 *   routes, neighbours; hostname; DNS and hosts for the containers).
 * - `release('delete')`: everything the record names, CNI DEL included, even when the VM died.
 * - {@link addSandboxNetwork}, {@link removeSandboxNetwork}, {@link rescanSandboxNetwork}: the same on
 *   a running q35 sandbox, with QMP hotplug (`getfd`, `netdev_add`, `device_add`).
 *
 * @module
 */
import path from 'node:path';
import { InvalidArgumentError, NotFoundError } from '../../errors.js';
import type { AgentClient } from '../../agent/client.js';
import type { GuestRoute } from '../../agent/network.js';
import type { VmDevice } from '../../hypervisor/hypervisor.js';
import * as validate from '../../validate.js';
import { FileLock } from '../../state/lock.js';
import { CniConfig } from '../../network/cni/config.js';
import { closeFds, isPluggable, type EndpointKind, type EndpointRecord, type InterNetworkModel } from '../../network/endpoints/index.js';
import { guestInterface, hostResolvConf, mergeDns, networkConfigRequest, type GuestInterface } from '../../network/guest-config.js';
import { Network, type CniAttachmentRecord, type CniCheckOutcome, type NetworkRecord } from '../../network/network.js';
import type { Interface } from '../../network/scan.js';
import {
  loadCniNetwork,
  resolveCniNetwork,
  resolveInterfaceSettings,
  type CniNetworkSpec,
  type InterfaceSettings,
  type ResolvedNetworkConfig,
} from '../../network/sandbox-config.js';
import type { GuestContext, ResourceContext, SandboxResource, VmContribution } from './resource.js';

/** Key of this resource's state in the sandbox record. */
export const NETWORK_KIND = 'network';

/** Most queues a NIC gets (one per vCPU up to this). */
const MAX_NIC_QUEUES = 8;
/** How long the agent waits for a NIC to appear in the guest. */
const GUEST_NIC_TIMEOUT_MS = 20_000;

/** The persisted state: the network's record (none before the first setup), and whether its first setup completed. */
export interface NetworkState {
  record?: NetworkRecord;
  ready: boolean;
}

/** The network's state from a record (the network's own module checks the record itself when it resumes it). */
export function parseNetworkState(value: unknown): NetworkState {
  const s = value as Partial<NetworkState> | undefined;
  return s && typeof s === 'object' && s.record && typeof s.record === 'object' ? { record: s.record, ready: s.ready === true } : { ready: false };
}

/** A state with a record. */
type SetUpState = NetworkState & { record: NetworkRecord };

function stateOf(state: unknown): SetUpState | undefined {
  const parsed = parseNetworkState(state);
  return parsed.record ? (parsed as SetUpState) : undefined;
}

function configOf(ctx: ResourceContext<unknown>): ResolvedNetworkConfig {
  const config = ctx.config.network;
  if (!config) throw new InvalidArgumentError('network', `sandbox "${ctx.sandboxId}" has no network: create it with a network config (e.g. network: {})`);
  return config;
}

/** Queues of each NIC: one per vCPU (multi-queue taps need QEMU mq=on, done by the hypervisor layer). */
export function nicQueues(cpus: number): number {
  return Math.max(1, Math.min(cpus, MAX_NIC_QUEUES));
}

/** An interface the sandbox will plug, with where it came from and how. */
export interface PlannedEndpoint {
  name: string;
  origin: EndpointRecord['origin'];
  model: InterNetworkModel | undefined;
  settings: InterfaceSettings | undefined;
}

/**
 * Which interfaces of the namespace become endpoints, in order: those of the CNI attachments
 * (in config order), then, when the scan is on, every other veth, macvlan, tap and macvtap
 * (by ifindex) that is not vmpod's own (its link group), not already plugged, not enslaved to a
 * bridge, not the parent of a macvlan or macvtap in the namespace (infrastructure, not an
 * endpoint), and passes the include/exclude filter (an include list overrides the last two). The sandbox's model applies to veth and
 * macvlan interfaces; a model set for an interface applies to it whatever its kind.
 *
 * @throws {@link NotFoundError} when a CNI attachment's interface is not in the namespace.
 */
export function planEndpoints(
  config: Pick<ResolvedNetworkConfig, 'scan' | 'model' | 'interfaces' | 'cni'>,
  attachments: readonly CniAttachmentRecord[],
  interfaces: readonly Interface[],
  options: { linkGroup: number; plugged: readonly string[]; scan?: ResolvedNetworkConfig['scan'] },
): PlannedEndpoint[] {
  const planned: PlannedEndpoint[] = [];
  const modelFor = (iface: Interface, explicit: InterNetworkModel | undefined): InterNetworkModel | undefined => {
    const own = explicit ?? config.interfaces[iface.name]?.model;
    if (own !== undefined) return own;
    return iface.kind === 'veth' || iface.kind === 'macvlan' ? config.model : undefined;
  };
  const taken = new Set(options.plugged);
  for (const a of attachments) {
    if (!a.added || taken.has(a.ifName)) continue;
    const iface = interfaces.find((i) => i.name === a.ifName);
    if (!iface) throw new NotFoundError('interface', `${a.ifName} (CNI network "${a.network}" reported it, but the namespace has none)`);
    const spec = config.cni.find((c) => c.ifName === a.ifName);
    planned.push({ name: iface.name, origin: { type: 'cni', network: a.network }, model: modelFor(iface, spec?.model), settings: config.interfaces[iface.name] });
    taken.add(iface.name);
  }
  const scan = options.scan ?? config.scan;
  if (scan === false) return planned;
  const found = [...interfaces].sort((a, b) => a.index - b.index);
  const parents = new Set(found.filter((i) => (i.kind === 'macvlan' || i.kind === 'macvtap') && i.linkNetnsId === undefined).map((i) => i.linkIndex));
  for (const iface of found) {
    if (taken.has(iface.name) || iface.group === options.linkGroup || !isPluggable(iface)) continue;
    if (scan.include !== undefined ? !scan.include.includes(iface.name) : iface.master !== undefined || parents.has(iface.index)) continue;
    if (scan.exclude.includes(iface.name)) continue;
    planned.push({ name: iface.name, origin: { type: 'scan' }, model: modelFor(iface, undefined), settings: config.interfaces[iface.name] });
  }
  return planned;
}

/** The VM device of a plugged endpoint. */
function nicDevice(endpoint: EndpointRecord, fds: number[], q35: boolean): VmDevice {
  // On q35 each NIC sits on a root port of its own, so that it can be unplugged later.
  return { kind: 'virtio-net', id: endpoint.deviceId, tap: { fds }, mac: endpoint.mac, mtu: endpoint.mtu, ...(q35 ? { rootPort: true } : {}) };
}

/** Tells the agent the hostname and DNS/hosts of the containers (from the config and the CNI results). */
async function configureDns(agent: AgentClient, config: ResolvedNetworkConfig, record: NetworkRecord, sandboxId: string, signal?: AbortSignal): Promise<void> {
  const dns = mergeDns([config.dns, ...record.attachments.map((a) => a.dns)], hostResolvConf());
  await agent.setNetworkConfig(networkConfigRequest(config.hostname ?? sandboxId, dns, config.hosts), signal ? { signal } : {});
}

async function configureNic(agent: AgentClient, guest: GuestInterface, signal?: AbortSignal): Promise<void> {
  await agent.configureInterface({ ...guest, timeoutMs: GUEST_NIC_TIMEOUT_MS }, { timeoutMs: GUEST_NIC_TIMEOUT_MS + 10_000, ...(signal ? { signal } : {}) });
}

export class NetworkResource implements SandboxResource<NetworkState> {
  readonly kind = NETWORK_KIND;

  parse(value: unknown): NetworkState {
    return parseNetworkState(value);
  }

  async prepare(ctx: ResourceContext<NetworkState>): Promise<VmContribution> {
    const config = configOf(ctx);
    const state = stateOf(ctx.state);
    const q35 = ctx.config.machine === 'q35';
    const devices: VmDevice[] = [];
    const fds: number[] = [];
    if (state?.ready) {
      // A later boot: the namespace and its endpoints are there; open their queues again.
      const save = (record: NetworkRecord): Promise<void> => ctx.update((s) => void Object.assign(s, { record, ready: true }));
      const net = await Network.resume(state.record, save).catch(async (error: unknown) => {
        if (!(error instanceof NotFoundError)) throw error;
        // The namespace is gone (deleted by hand, or the host rebooted): set it all up again.
        await Network.release(state.record).catch(() => undefined);
        await ctx.update((s) => void Object.assign(s, { record: undefined, ready: false }));
        return undefined;
      });
      if (!net) return this.prepare(ctx);
      try {
        for (const endpoint of net.endpoints) {
          const queues = await net.reopen(endpoint.name);
          fds.push(...queues);
          endpoint.plugged = true;
          devices.push(nicDevice(endpoint, queues, q35));
        }
        await save(net.record);
      } catch (error) {
        closeFds(fds);
        throw error;
      } finally {
        net.close();
      }
      return { devices, fds };
    }
    if (state) await Network.release(state.record); // a first setup that never finished
    const save = (record: NetworkRecord): Promise<void> => ctx.update((s) => void Object.assign(s, { record, ready: false }));
    const net = await Network.open({
      netns: config.netns ?? `vmpod-${ctx.sandboxId}`,
      create: config.netns === undefined,
      containerId: ctx.sandboxId,
      cniPluginDirs: config.cniPluginDirs,
      cniCacheDir: config.cniCacheDir ?? path.join(ctx.dir, 'cni'),
      ...(config.cniTimeoutMs === undefined ? {} : { cniTimeoutMs: config.cniTimeoutMs }),
      save,
    });
    try {
      for (const network of config.cni) {
        const conf = network.network ? CniConfig.fromObject(network.network) : await loadCniNetwork(network, config.cniPluginDirs, ctx.signal ? { signal: ctx.signal } : {});
        await net.addCni(conf, {
          ifName: network.ifName,
          ...(network.args ? { args: network.args } : {}),
          ...(network.capabilityArgs ? { capabilityArgs: network.capabilityArgs } : {}),
          ...(ctx.signal ? { signal: ctx.signal } : {}),
        });
      }
      const interfaces = await net.scan();
      const queues = nicQueues(ctx.config.cpus);
      for (const planned of planEndpoints(config, net.record.attachments, interfaces, { linkGroup: net.record.linkGroup, plugged: [] })) {
        const plugged = await net.plug(planned.name, { origin: planned.origin, queues, model: planned.model, overrides: planned.settings }, interfaces);
        fds.push(...plugged.fds);
        plugged.record.plugged = true;
        devices.push(nicDevice(plugged.record, plugged.fds, q35));
      }
      await ctx.update((s) => void Object.assign(s, { record: net.record, ready: true }));
    } catch (error) {
      // The first setup is all or nothing: what was made goes again (CNI DEL included).
      closeFds(fds);
      net.close();
      await Network.release(net.record, { save }).catch(() => undefined);
      await ctx.update((s) => void Object.assign(s, { record: undefined, ready: false }));
      throw error;
    }
    net.close();
    return { devices, fds };
  }

  async attach(ctx: GuestContext<NetworkState>): Promise<void> {
    const state = stateOf(ctx.state);
    if (!state) return;
    await configureDns(ctx.agent, configOf(ctx), state.record, ctx.sandboxId, ctx.signal);
    for (const endpoint of state.record.endpoints) {
      if (endpoint.plugged) await configureNic(ctx.agent, endpoint.guest, ctx.signal);
    }
  }

  async release(ctx: ResourceContext<NetworkState>, phase: 'stop' | 'delete'): Promise<void> {
    const state = stateOf(ctx.state);
    if (!state) return;
    if (phase === 'stop') {
      // The VM is gone with its NICs; the namespace and its endpoints stay for the next boot.
      await ctx.update((s) => {
        for (const endpoint of s.record?.endpoints ?? []) endpoint.plugged = false;
      });
      return;
    }
    await Network.release(state.record, { save: (record) => ctx.update((s) => void (s.record = record)) });
    await ctx.update((s) => void Object.assign(s, { record: undefined, ready: false }));
  }
}

// --- Hotplug on a running sandbox ----------------------------------------------------------------

/** What to add to a running sandbox: a CNI network, or an interface already in its namespace. */
export interface AddNetworkOptions {
  /** A CNI network to ADD (its interface is then plugged). */
  cni?: CniNetworkSpec;
  /** Or the name of an interface already in the namespace (made by anyone). */
  interface?: string;
  /** Inter-network model (veth, macvlan), default the sandbox's. */
  model?: InterNetworkModel;
  /** Guest addresses, routes, neighbours that replace what the scan finds. */
  addresses?: string[];
  routes?: GuestRoute[];
  signal?: AbortSignal;
}

/** One interface of a sandbox's network. */
export interface SandboxInterfaceInfo {
  /** Its name in the namespace and in the guest. */
  name: string;
  kind: EndpointKind;
  model: InterNetworkModel | 'direct';
  /** `cni` (with the network's name) or `scan`. */
  origin: 'cni' | 'scan';
  network?: string;
  mac: string;
  mtu: number;
  queues: number;
  /** The VM device id of its NIC. */
  deviceId: string;
  /** Whether its NIC is in the VM now. */
  plugged: boolean;
  /** What the guest has on it. */
  addresses: string[];
  routes: GuestRoute[];
  /** Links vmpod made for it in the namespace. */
  hostLinks: string[];
}

/** The interfaces of a sandbox's network, from its persisted state (no VM needed). */
export function describeSandboxNetwork(state: unknown): SandboxInterfaceInfo[] {
  const s = stateOf(state);
  if (!s) return [];
  return s.record.endpoints.map((e) => {
    const info: SandboxInterfaceInfo = {
      name: e.name,
      kind: e.kind,
      model: e.model,
      origin: e.origin.type,
      mac: e.mac,
      mtu: e.mtu,
      queues: e.backend.queues,
      deviceId: e.deviceId,
      plugged: e.plugged,
      addresses: [...e.guest.addresses],
      routes: e.guest.routes.map((r) => ({ ...r })),
      hostLinks: e.changes.flatMap((c) => (c.type === 'link' ? [c.name] : [])),
    };
    if (e.origin.type === 'cni') info.network = e.origin.network;
    return info;
  });
}

/**
 * Runs a change of a running sandbox's network with the network resumed from the record. The
 * network's record is one document that each step rewrites, so changes of one sandbox's network
 * are serialised by a lock of their own (`network.lock`), taken for the whole change. That lock
 * never blocks anything else: stop and delete do not take it (a change under way finds the
 * sandbox stopped at its next record write and ends), and each guest call in it has a deadline.
 */
async function withNetwork<T>(ctx: GuestContext<NetworkState>, fn: (config: ResolvedNetworkConfig, net: Network) => Promise<T>): Promise<T> {
  const config = configOf(ctx);
  if (ctx.config.machine !== 'q35') throw new InvalidArgumentError('machine', 'NICs can be hot plugged only on q35 (microvm has no PCI hotplug)');
  const lock = await FileLock.acquire(path.join(ctx.dir, 'network.lock'), { timeoutMs: 60_000, ...(ctx.signal ? { signal: ctx.signal } : {}) });
  try {
    const state = stateOf(await ctx.update((s) => s));
    if (!state?.ready) throw new InvalidArgumentError('network', `sandbox "${ctx.sandboxId}" has no network set up`);
    const save = (record: NetworkRecord): Promise<void> => ctx.update((s) => void Object.assign(s, { record, ready: true }));
    const net = await Network.resume(state.record, save);
    try {
      return await fn(config, net);
    } finally {
      net.close();
    }
  } finally {
    await lock.release();
  }
}

/** Plugs one interface of the namespace into the running VM and configures it in the guest. */
async function hotplugEndpoint(ctx: GuestContext<NetworkState>, net: Network, name: string, options: Parameters<Network['plug']>[1], interfaces: readonly Interface[]): Promise<EndpointRecord> {
  const { record, fds } = await net.plug(name, options, interfaces);
  try {
    await ctx.vm.hotplug(nicDevice(record, fds, false), ctx.signal ? { signal: ctx.signal } : {});
  } catch (error) {
    closeFds(fds);
    await net.unplug(name).catch(() => undefined);
    throw error;
  }
  closeFds(fds); // QEMU took its copies with getfd
  await net.setPlugged(name, true);
  try {
    await configureNic(ctx.agent, record.guest, ctx.signal);
  } catch (error) {
    await hotunplugEndpoint(ctx, net, record).catch(() => undefined);
    throw error;
  }
  return record;
}

/** Takes one endpoint out of the running VM and undoes what vmpod made for it (not the CNI attachment). */
async function hotunplugEndpoint(ctx: GuestContext<NetworkState>, net: Network, endpoint: EndpointRecord): Promise<void> {
  if (endpoint.plugged) {
    await ctx.agent.removeInterface(endpoint.mac, ctx.signal ? { signal: ctx.signal } : {}).catch(() => undefined);
    await ctx.vm.unplug(endpoint.deviceId, ctx.signal ? { signal: ctx.signal } : {}).catch((error: unknown) => {
      if (!(error instanceof NotFoundError)) throw error;
    });
    await net.setPlugged(endpoint.name, false);
  }
  await net.unplug(endpoint.name);
}

/** A free `ethN` name in the namespace. */
function freeIfName(record: NetworkRecord, interfaces: readonly Interface[]): string {
  const used = new Set([...interfaces.map((i) => i.name), ...record.attachments.map((a) => a.ifName), ...record.endpoints.map((e) => e.name)]);
  for (let i = 0; ; i++) if (!used.has(`eth${i}`)) return `eth${i}`;
}

/**
 * Adds an interface to a running q35 sandbox: CNI ADD of a network (or an interface already in
 * the namespace), its endpoint, the NIC hot plugged (QMP `getfd`, `netdev_add tap,fd=...`,
 * `device_add virtio-net-pci,bus=rpN`) and configured in the guest; the containers' DNS is
 * refreshed. On failure everything done is undone (CNI DEL included).
 */
export async function addSandboxNetwork(ctx: GuestContext<NetworkState>, options: AddNetworkOptions): Promise<SandboxInterfaceInfo> {
  return withNetwork(ctx, async (config, net) => {
    if ((options.cni === undefined) === (options.interface === undefined)) {
      throw new InvalidArgumentError('options', 'give either a CNI network (cni) or the name of an interface in the namespace (interface)');
    }
    const overrides = resolveInterfaceSettings(
      {
        ...(options.model === undefined ? {} : { model: options.model }),
        ...(options.addresses === undefined ? {} : { addresses: options.addresses }),
        ...(options.routes === undefined ? {} : { routes: options.routes }),
      },
      'options',
    );
    const model = overrides.model;
    let interfaces = await net.scan();
    let name: string;
    let origin: EndpointRecord['origin'];
    let cniAdded = false;
    if (options.cni !== undefined) {
      const spec = resolveCniNetwork(options.cni, 'cni', freeIfName(net.record, interfaces));
      const conf = await loadCniNetwork(spec, config.cniPluginDirs, ctx.signal ? { signal: ctx.signal } : {});
      await net.addCni(conf, {
        ifName: spec.ifName,
        ...(spec.args ? { args: spec.args } : {}),
        ...(spec.capabilityArgs ? { capabilityArgs: spec.capabilityArgs } : {}),
        ...(ctx.signal ? { signal: ctx.signal } : {}),
      });
      cniAdded = true;
      name = spec.ifName;
      origin = { type: 'cni', network: conf.name };
      interfaces = await net.scan();
    } else {
      name = validate.interfaceName(options.interface, 'interface');
      origin = { type: 'scan' };
    }
    try {
      const iface = interfaces.find((i) => i.name === name);
      const planned = model ?? config.interfaces[name]?.model ?? (iface && (iface.kind === 'veth' || iface.kind === 'macvlan') ? config.model : undefined);
      const { model: _model, ...settings } = { ...config.interfaces[name], ...overrides };
      await hotplugEndpoint(ctx, net, name, { origin, queues: nicQueues(ctx.config.cpus), model: planned, overrides: settings }, interfaces);
    } catch (error) {
      if (cniAdded) await net.removeCni(name).catch(() => undefined);
      throw error;
    }
    await configureDns(ctx.agent, config, net.record, ctx.sandboxId, ctx.signal);
    return describeSandboxNetwork({ record: net.record, ready: true }).find((i) => i.name === name) as SandboxInterfaceInfo;
  });
}

/**
 * Removes an interface from a running sandbox, by its name (or its CNI network's name): the
 * guest's configuration, the NIC (QMP `device_del`, then `netdev_del` once the guest let go),
 * what vmpod made for it, and, for a CNI one, CNI DEL. The containers' DNS is refreshed.
 *
 * @throws {@link NotFoundError} when the sandbox has no such interface.
 */
export async function removeSandboxNetwork(ctx: GuestContext<NetworkState>, name: string): Promise<void> {
  await withNetwork(ctx, async (config, net) => {
    const record = net.record;
    const endpoint = record.endpoints.find((e) => e.name === name) ?? record.endpoints.find((e) => e.origin.type === 'cni' && e.origin.network === name);
    const ifName = endpoint?.name ?? name;
    const attachment = record.attachments.find((a) => a.ifName === ifName) ?? record.attachments.find((a) => a.network === name);
    if (!endpoint && !attachment) throw new NotFoundError('sandbox interface', name);
    if (endpoint) await hotunplugEndpoint(ctx, net, endpoint);
    if (attachment) await net.removeCni(attachment.ifName);
    await configureDns(ctx.agent, config, net.record, ctx.sandboxId, ctx.signal);
  });
}

/**
 * CNI CHECK of a running sandbox's CNI attachments (or the one of interface or network
 * `name`): see {@link Network.checkCni}.
 */
export async function checkSandboxNetwork(ctx: GuestContext<NetworkState>, name?: string): Promise<CniCheckOutcome[]> {
  return withNetwork(ctx, async (_config, net) => {
    const ifName = name === undefined ? undefined : (net.record.attachments.find((a) => a.ifName === name || a.network === name)?.ifName ?? name);
    return net.checkCni(ifName);
  });
}

/** What a rescan changed, by interface name. */
export interface RescanResult {
  /** New interfaces found and plugged. */
  added: string[];
  /** Interfaces gone from the namespace, unplugged (CNI DEL for CNI ones). */
  removed: string[];
  /** Interfaces whose addresses or routes changed, configured again in the guest. */
  updated: string[];
}

function sameGuest(a: GuestInterface, b: GuestInterface): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * Scans the namespace of a running sandbox again and brings the VM in line: new veth, macvlan,
 * tap and macvtap interfaces (other than excluded ones) are plugged, endpoints whose interface
 * is gone are unplugged (and CNI DEL'd), and changed addresses or routes are mirrored again.
 */
export async function rescanSandboxNetwork(ctx: GuestContext<NetworkState>): Promise<RescanResult> {
  return withNetwork(ctx, async (config, net) => {
    const result: RescanResult = { added: [], removed: [], updated: [] };
    const interfaces = await net.scan();
    for (const endpoint of [...net.endpoints]) {
      const iface = interfaces.find((i) => i.name === endpoint.name);
      if (!iface) {
        await hotunplugEndpoint(ctx, net, endpoint);
        if (net.record.attachments.some((a) => a.ifName === endpoint.name)) await net.removeCni(endpoint.name);
        result.removed.push(endpoint.name);
        continue;
      }
      const guest = guestInterface(
        iface,
        { mac: endpoint.mac, mtu: endpoint.mtu },
        { mirrorAddresses: endpoint.kind !== 'tap', overrides: config.interfaces[endpoint.name] },
      );
      if (!sameGuest(guest, endpoint.guest)) {
        await net.setGuest(endpoint.name, guest);
        if (endpoint.plugged) await configureNic(ctx.agent, guest, ctx.signal);
        result.updated.push(endpoint.name);
      }
    }
    const scan = config.scan === false ? { exclude: [] } : { exclude: config.scan.exclude, ...(config.scan.include ? { include: config.scan.include } : {}) };
    const planned = planEndpoints(config, [], interfaces, { linkGroup: net.record.linkGroup, plugged: net.endpoints.map((e) => e.name), scan });
    for (const p of planned) {
      await hotplugEndpoint(ctx, net, p.name, { origin: p.origin, queues: nicQueues(ctx.config.cpus), model: p.model, overrides: p.settings }, interfaces);
      result.added.push(p.name);
    }
    if (result.removed.length > 0) await configureDns(ctx.agent, config, net.record, ctx.sandboxId, ctx.signal);
    return result;
  });
}
