/**
 * Routes: `ip route add/replace/delete/show`.
 *
 * @module
 */
import net from 'node:net';
import { AlreadyExistsError, InvalidArgumentError, NotFoundError } from '../errors.js';
import type { NativeRoute, NativeRouteSpec } from '../native.js';
import * as validate from '../validate.js';
import { SCOPES, scopeName, type Scope } from './address.js';
import * as check from './check.js';
import { linkErrors } from './link.js';
import { netnsErrors, nsArg, type NetnsOption } from './netns.js';
import { callNative, combineErrorMaps } from '../native-call.js';

/** Route types, as `ip route` names them. */
export type RouteType = 'unicast' | 'local' | 'broadcast' | 'anycast' | 'multicast' | 'blackhole' | 'unreachable' | 'prohibit' | 'throw';
const TYPES: readonly RouteType[] = ['unicast', 'local', 'broadcast', 'anycast', 'multicast', 'blackhole', 'unreachable', 'prohibit', 'throw'];
/** Route protocols (who installed it), as `ip route` names them. */
export type RouteProtocol = 'kernel' | 'boot' | 'static' | 'dhcp' | (string & {});
const PROTOCOLS: Readonly<Record<string, number>> = { redirect: 1, kernel: 2, boot: 3, static: 4, ra: 9, dhcp: 16 };
/** The main routing table (`table main`). */
export const MAIN_TABLE = 254;
/** The local table, of the kernel's own local and broadcast routes. */
export const LOCAL_TABLE = 255;

export interface RouteSpec extends NetnsOption {
  /** `default` or a destination `ADDRESS/PREFIX`. */
  dst: string;
  /** `via GATEWAY` */
  via?: string;
  /** `dev DEV` */
  dev?: string;
  /** `src ADDRESS` (preferred source). */
  src?: string;
  /** `metric N` */
  metric?: number;
  /** `table N` (default main). */
  table?: number;
  /** `scope S` (default: link for an IPv4 route without gateway, global otherwise). */
  scope?: Scope;
  /** `proto P` (default boot when adding). */
  protocol?: 'kernel' | 'boot' | 'static' | 'dhcp' | number;
  /** `TYPE` before the destination (default unicast). */
  type?: RouteType;
  /** `onlink`: the gateway is on the link even without a matching prefix. */
  onlink?: boolean;
  /** Family of a `default` route without gateway (default 4). */
  family?: 4 | 6;
}

/** A route as `ip route show table all` lists it. */
export interface Route {
  family: 4 | 6;
  /** `default` or `ADDRESS/PREFIX`. */
  dst: string;
  gateway?: string;
  dev?: string;
  src?: string;
  metric?: number;
  table: number;
  scope: Scope | number;
  protocol: RouteProtocol | number;
  type: RouteType | number;
  onlink: boolean;
  /** A multipath route (its next hops are not detailed here). */
  multipath?: boolean;
}

function toRoute(r: NativeRoute): Route {
  const protocol = Object.entries(PROTOCOLS).find(([, v]) => v === r.protocol)?.[0];
  const out: Route = {
    family: r.family,
    dst: r.dstLength === 0 && r.dst === undefined ? 'default' : `${r.dst ?? (r.family === 4 ? '0.0.0.0' : '::')}/${r.dstLength}`,
    table: r.table,
    scope: scopeName(r.scope),
    protocol: protocol ?? r.protocol,
    type: TYPES[r.type - 1] ?? r.type,
    onlink: (r.flags & 0x4) !== 0,
  };
  if (r.gateway !== undefined) out.gateway = r.gateway;
  if (r.dev !== undefined) out.dev = r.dev;
  if (r.src !== undefined) out.src = r.src;
  if (r.metric !== undefined) out.metric = r.metric;
  if (r.multipath) out.multipath = true;
  return out;
}

function toSpec(s: Partial<RouteSpec>, adding: boolean): NativeRouteSpec {
  let family: 4 | 6 | undefined;
  let dst: string | undefined;
  let dstLength = 0;
  if (s.dst !== 'default') {
    const c = validate.cidr(s.dst, 'dst');
    family = c.family;
    dst = c.address;
    dstLength = c.prefixLength;
  }
  const ipOf = (value: unknown, field: string): string => {
    const ip = validate.ipAddress(value, field);
    const f = net.isIP(ip) as 4 | 6;
    if (family !== undefined && f !== family) throw new InvalidArgumentError(field, `${ip} is not IPv${family} like the destination`);
    family = f;
    return ip;
  };
  const gateway = check.optional(s.via, (v) => ipOf(v, 'via'));
  const src = check.optional(s.src, (v) => ipOf(v, 'src'));
  const given = check.optional(s.family, (v) => check.oneOf(String(v), 'family', ['4', '6']));
  if (given !== undefined && family !== undefined && Number(given) !== family) throw new InvalidArgumentError('family', `the route is IPv${family}`);
  family ??= given === undefined ? 4 : (Number(given) as 4 | 6);
  const protocol =
    s.protocol === undefined ? undefined : typeof s.protocol === 'number' ? validate.integer(s.protocol, 'protocol', 0, 255) : PROTOCOLS[check.oneOf(s.protocol, 'protocol', ['kernel', 'boot', 'static', 'dhcp'])];
  const type = check.optional(s.type, (v) => TYPES.indexOf(check.oneOf(v, 'type', TYPES)) + 1);
  const dev = check.optional(s.dev, (v) => validate.interfaceName(v, 'dev'));
  if (adding && (type === undefined || type === 1) && gateway === undefined && dev === undefined) {
    throw new InvalidArgumentError('dev', 'a unicast route needs a gateway (via) or a device (dev)');
  }
  return {
    family,
    dst,
    dstLength,
    gateway,
    src,
    dev,
    metric: check.optional(s.metric, (v) => check.u32(v, 'metric')),
    table: check.optional(s.table, (v) => check.u32(v, 'table', 1)),
    scope: check.optional(s.scope, (v) => SCOPES[check.oneOf(v, 'scope', Object.keys(SCOPES) as Scope[])]),
    protocol,
    type,
    onlink: check.optional(s.onlink, (v) => check.boolean(v, 'onlink')),
  };
}

/**
 * Adds a route: `ip [-n NS] route add|replace [TYPE] DST [via GW] [dev DEV] [src S] [metric M]
 * [table T] [scope S] [proto P] [onlink]`.
 *
 * @throws {@link AlreadyExistsError} when the route exists (unless `replace`), {@link NotFoundError}
 *   when there is no such link.
 */
export async function addRoute(route: RouteSpec, options?: { replace?: boolean }): Promise<void> {
  const r = check.options(route, 'route');
  const replace = check.boolean(check.options(options, 'options').replace ?? false, 'replace');
  const spec = toSpec(r, true);
  const ns = nsArg(r.netns);
  await callNative(
    (n) => n.routeAdd(ns, spec, replace),
    combineErrorMaps((e, system) => (e.code === 'EEXIST' ? new AlreadyExistsError('route', r.dst as string, { cause: system }) : undefined), linkErrors(spec.dev ?? '')),
  );
}

/**
 * Deletes a route: `ip [-n NS] route delete DST [via GW] [dev DEV] [metric M] [table T] ...`;
 * what is not given matches anything.
 *
 * @throws {@link NotFoundError} when no route matches.
 */
export async function deleteRoute(route: RouteSpec): Promise<void> {
  const r = check.options(route, 'route');
  const spec = toSpec(r, false);
  const ns = nsArg(r.netns);
  await callNative(
    (n) => n.routeDelete(ns, spec),
    combineErrorMaps((e, system) => (e.code === 'ESRCH' ? new NotFoundError('route', r.dst as string, { cause: system }) : undefined), linkErrors(spec.dev ?? '')),
  );
}

/**
 * Routes of the namespace: `ip [-n NS] route show [table T|all] [dev DEV]` (IPv4 and IPv6).
 *
 * @param options.table a table number, or `all` (default: main).
 */
export async function listRoutes(options?: NetnsOption & { table?: number | 'all'; family?: 4 | 6; dev?: string }): Promise<Route[]> {
  const o = check.options(options, 'options');
  const table = o.table === 'all' ? undefined : check.u32(o.table ?? MAIN_TABLE, 'table', 1);
  const family = check.optional(o.family, (v) => Number(check.oneOf(String(v), 'family', ['4', '6'])));
  const dev = check.optional(o.dev, (v) => validate.interfaceName(v, 'dev'));
  const ns = nsArg(o.netns);
  const all = await callNative((n) => n.routeList(ns), netnsErrors);
  return all
    .filter((r) => (table === undefined || r.table === table) && (family === undefined || r.family === family) && (dev === undefined || r.dev === dev))
    .map(toRoute);
}
