/**
 * Traffic control: the ingress qdisc and u32 match-all + mirred redirect filters, which is all
 * the "tcfilter" model needs (this kernel has no matchall or flower classifier).
 *
 * @module
 */
import { AlreadyExistsError, InvalidArgumentError, NotFoundError } from '../errors.js';
import type { NativeFilter, NativeQdisc } from '../native.js';
import * as validate from '../validate.js';
import * as check from './check.js';
import { linkErrors } from './link.js';
import { netnsErrors, nsArg, type NetnsOption } from './netns.js';
import { callNative, combineErrorMaps } from '../native-call.js';

/** The ingress qdisc's handle and its filters' parent, `ffff:`. */
export const INGRESS_PARENT = 0xffff0000;
const ROOT = 0xffffffff;

/** A qdisc as `tc qdisc show` lists it. */
export interface Qdisc {
  dev: string;
  index: number;
  kind: string;
  /** tc notation, e.g. `ffff:` */
  handle: string;
  /** tc notation, e.g. `ffff:fff1` (ingress) or `root` */
  parent: string;
}

/** A mirred action of a filter. */
export interface MirredAction {
  kind: 'mirred';
  direction: 'egress' | 'ingress';
  mode: 'redirect' | 'mirror';
  /** Target link (resolved in the filter's namespace). */
  dev?: string;
  ifindex: number;
}

/** A filter as `tc filter show` lists it. */
export interface Filter {
  dev: string;
  /** tc notation, e.g. `ffff:` */
  parent: string;
  /** `pref`, 1-65535 */
  prio: number;
  /** `all`, `ip`, `ipv6`, `arp`, or 0xNNNN */
  protocol: string;
  kind: string;
  /** tc notation, e.g. `800::800` for u32 */
  handle: string;
  chain?: number;
  actions: Array<MirredAction | { kind: string }>;
}

/** Formats a handle as tc does: `MAJ:MIN` in hex, `MAJ:` when MIN is 0, `root` for TC_H_ROOT. */
export function formatHandle(handle: number): string {
  if (handle === ROOT) return 'root';
  const major = (handle >>> 16).toString(16);
  const minor = handle & 0xffff;
  return minor === 0 ? `${major}:` : `${major}:${minor.toString(16)}`;
}

/** Parses tc handle notation (`ffff:`, `1:2`, `root`, `ingress`). */
export function parseHandle(text: string, field = 'parent'): number {
  if (text === 'root') return ROOT;
  if (text === 'ingress') return INGRESS_PARENT;
  const m = /^([0-9a-f]{1,4}):([0-9a-f]{0,4})$/iu.exec(text);
  if (!m) throw new InvalidArgumentError(field, `${JSON.stringify(text)} is not a tc handle (MAJOR:[MINOR] in hex, e.g. ffff:)`);
  return ((parseInt(m[1] as string, 16) << 16) | (m[2] ? parseInt(m[2], 16) : 0)) >>> 0;
}

function formatU32Handle(h: number): string {
  const htid = (h >>> 20) & 0xfff;
  const hash = (h >>> 12) & 0xff;
  const node = h & 0xfff;
  return `${htid.toString(16)}:${hash ? hash.toString(16) : ''}${node ? `:${node.toString(16)}` : ''}`;
}

const PROTOCOLS: Readonly<Record<number, string>> = { 0x0003: 'all', 0x0800: 'ip', 0x86dd: 'ipv6', 0x0806: 'arp', 0x8100: '802.1q' };

function toQdisc(q: NativeQdisc): Qdisc {
  return { dev: q.dev, index: q.index, kind: q.kind, handle: formatHandle(q.handle), parent: formatHandle(q.parent) };
}

function toFilter(dev: string, f: NativeFilter): Filter {
  const out: Filter = {
    dev,
    parent: formatHandle(f.parent),
    prio: f.prio,
    protocol: PROTOCOLS[f.protocol] ?? `0x${f.protocol.toString(16).padStart(4, '0')}`,
    kind: f.kind,
    handle: f.kind === 'u32' ? formatU32Handle(f.handle) : f.handle.toString(16),
    actions: f.actions.map((a) => {
      if (a.kind !== 'mirred' || a.eaction === undefined) return { kind: a.kind };
      // TCA_EGRESS_REDIR 1, TCA_EGRESS_MIRROR 2, TCA_INGRESS_REDIR 3, TCA_INGRESS_MIRROR 4
      const mirred: MirredAction = {
        kind: 'mirred',
        direction: a.eaction <= 2 ? 'egress' : 'ingress',
        mode: a.eaction % 2 === 1 ? 'redirect' : 'mirror',
        ifindex: a.ifindex ?? 0,
      };
      if (a.dev !== undefined) mirred.dev = a.dev;
      return mirred;
    }),
  };
  if (f.chain !== undefined) out.chain = f.chain;
  return out;
}

/**
 * Adds the ingress qdisc of a link: `tc [-n NS] qdisc add dev DEV ingress`.
 *
 * @throws {@link AlreadyExistsError} when it has one, {@link NotFoundError} when there is no such link.
 */
export async function addIngressQdisc(dev: string, options?: NetnsOption): Promise<void> {
  const name = validate.interfaceName(dev, 'dev');
  const ns = nsArg(check.options(options, 'options').netns);
  await callNative(
    (n) => n.qdiscAddIngress(ns, name),
    combineErrorMaps((e, system) => (e.code === 'EEXIST' ? new AlreadyExistsError('ingress qdisc', name, { cause: system }) : undefined), linkErrors(name)),
  );
}

/**
 * Removes the ingress qdisc of a link, with its filters: `tc [-n NS] qdisc del dev DEV ingress`.
 *
 * @throws {@link NotFoundError} when it has none, or there is no such link.
 */
export async function deleteIngressQdisc(dev: string, options?: NetnsOption): Promise<void> {
  const name = validate.interfaceName(dev, 'dev');
  const ns = nsArg(check.options(options, 'options').netns);
  await callNative(
    (n) => n.qdiscDeleteIngress(ns, name),
    combineErrorMaps((e, system) => (e.code === 'ENOENT' || e.code === 'EINVAL' ? new NotFoundError('ingress qdisc', name, { cause: system }) : undefined), linkErrors(name)),
  );
}

/** Qdiscs of the namespace, or of one link: `tc [-n NS] qdisc show [dev DEV]`. */
export async function listQdiscs(options?: NetnsOption & { dev?: string }): Promise<Qdisc[]> {
  const o = check.options(options, 'options');
  const dev = check.optional(o.dev, (v) => validate.interfaceName(v, 'dev'));
  const ns = nsArg(o.netns);
  const all = await callNative((n) => n.qdiscList(ns), netnsErrors);
  return all.filter((q) => dev === undefined || q.dev === dev).map(toQdisc);
}

/**
 * Redirects everything arriving on `dev` to the egress of `to`:
 * `tc [-n NS] filter add dev DEV parent ffff: protocol all [prio P] u32 match u8 0 0
 *  action mirred egress redirect dev TO`. `dev` needs its ingress qdisc.
 *
 * @throws {@link NotFoundError} when a link or the ingress qdisc is missing.
 */
export async function addRedirectFilter(dev: string, to: string, options?: NetnsOption & { prio?: number }): Promise<void> {
  const from = validate.interfaceName(dev, 'dev');
  const target = validate.interfaceName(to, 'to');
  const o = check.options(options, 'options');
  const prio = check.optional(o.prio, (v) => validate.integer(v, 'prio', 1, 0xffff));
  const ns = nsArg(o.netns);
  await callNative(
    (n) => n.filterAddRedirect(ns, { dev: from, to: target, prio }),
    combineErrorMaps(
      linkErrors(from),
      (e, system) => (e.syscall === 'RTM_NEWTFILTER' && (e.code === 'EINVAL' || e.code === 'ENOENT') && /qdisc/iu.test(e.detail ?? '') ? new NotFoundError('ingress qdisc', from, { cause: system }) : undefined),
      (e, system) => (e.code === 'EEXIST' ? new AlreadyExistsError('filter', `${from} prio ${prio ?? 'auto'}`, { cause: system }) : undefined),
    ),
  );
}

/**
 * Filters of a link under a parent (default the ingress qdisc): `tc [-n NS] filter show dev DEV
 * parent ffff:`. u32 hash tables are left out.
 */
export async function listFilters(dev: string, options?: NetnsOption & { parent?: string }): Promise<Filter[]> {
  const name = validate.interfaceName(dev, 'dev');
  const o = check.options(options, 'options');
  const parent = parseHandle(o.parent ?? 'ffff:');
  const ns = nsArg(o.netns);
  const all = await callNative((n) => n.filterList(ns, name, parent), combineErrorMaps(linkErrors(name), (e, system) => (e.code === 'EINVAL' || e.code === 'ENOENT' ? new NotFoundError('qdisc', `${o.parent ?? 'ffff:'} on ${name}`, { cause: system }) : undefined)));
  return all.map((f) => toFilter(name, f));
}

/**
 * Deletes the filters of a link under a parent (default the ingress qdisc), all of them or those
 * of one prio: `tc [-n NS] filter del dev DEV parent ffff: [prio P]`.
 *
 * @throws {@link NotFoundError} when there is nothing to delete.
 */
export async function deleteFilters(dev: string, options?: NetnsOption & { parent?: string; prio?: number }): Promise<void> {
  const name = validate.interfaceName(dev, 'dev');
  const o = check.options(options, 'options');
  const parent = parseHandle(o.parent ?? 'ffff:');
  const prio = check.optional(o.prio, (v) => validate.integer(v, 'prio', 1, 0xffff));
  const ns = nsArg(o.netns);
  await callNative(
    (n) => n.filterDelete(ns, { dev: name, parent, prio }),
    combineErrorMaps(linkErrors(name), (e, system) => (e.code === 'ENOENT' || e.code === 'EINVAL' ? new NotFoundError('filter', `${name} parent ${formatHandle(parent)}${prio ? ` prio ${prio}` : ''}`, { cause: system }) : undefined)),
  );
}
