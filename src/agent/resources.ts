/**
 * The resources of a running container that can change (`UpdateContainer`, like `runc update`):
 * the subset of OCI `linux.resources` the agent writes to the container's cgroup v2 files, and
 * its check, the same bounds as the agent's (docs/agent-protocol.md, "UpdateContainer").
 *
 * @module
 */
import { InvalidArgumentError } from '../errors.js';
import * as validate from '../validate.js';

/** Smallest memory limit, bytes (1 MiB): below it nothing runs. */
export const MIN_MEMORY_LIMIT = 1024 * 1024;
/** Largest CFS quota the kernel takes, microseconds (2^44 - 1). */
export const MAX_CPU_QUOTA_US = 2 ** 44 - 1;
/** Largest pids limit (the kernel's PID_MAX_LIMIT on 64-bit). */
export const MAX_PIDS = 4_194_304;

/**
 * New limits for a container, OCI `linux.resources` fields (cgroup v1 units, as runtimes take
 * them); the agent converts them to cgroup v2 files as runc does. Fields left out are not
 * changed. `-1` means "no limit" where it is allowed.
 */
export interface ContainerResources {
  memory?: {
    /** memory.max, bytes: at least 1 MiB, or -1 (no limit). A limit below what the container uses makes the kernel reclaim, then OOM-kill. */
    limit?: number;
    /** memory.low, bytes, or -1 (`max`). */
    reservation?: number;
    /**
     * Memory plus swap, bytes (OCI's meaning): needs `limit` in the same update and must not be
     * below it (memory.swap.max = swap - limit); -1 is no swap limit; 0 leaves swap as it is.
     */
    swap?: number;
  };
  cpu?: {
    /** Relative weight, 2 to 262144 (cgroup v1 shares), written as cpu.weight 1-10000. */
    shares?: number;
    /** CPU time per period, microseconds: 1000 to 2^44 - 1, or -1 (no limit). cpu.max's first field. */
    quota?: number;
    /** The period of `quota`, microseconds: 1000 to 1000000. cpu.max's second field. */
    period?: number;
    /** cpuset.cpus: a list such as `0-1,3`. */
    cpus?: string;
    /** cpuset.mems: a list such as `0`. */
    mems?: string;
  };
  pids?: {
    /** pids.max: 1 to 4194304, or -1 / 0 (no limit). */
    limit: number;
  };
  blockIO?: {
    /** Relative block I/O weight, 10 to 1000 (io.bfq.weight, else io.weight converted to 1-10000). */
    weight?: number;
  };
}

function keys(value: unknown, field: string, allowed: readonly string[]): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new InvalidArgumentError(field, 'must be an object');
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) throw new InvalidArgumentError(`${field}.${key}`, `cannot be updated (known: ${allowed.join(', ')})`);
  }
  return value as Record<string, unknown>;
}

/** -1, or an integer from `min` to `max`. */
function limitOrNone(value: unknown, field: string, min: number, max: number): number {
  if (value === -1) return -1;
  try {
    return validate.integer(value, field, min, max);
  } catch {
    const shown = typeof value === 'number' ? String(value) : JSON.stringify(value);
    throw new InvalidArgumentError(field, `${shown} is neither -1 (no limit) nor an integer in [${min}, ${max}]`);
  }
}

/** A cpu list: `N` or `N-M` (N <= M, below 4096), joined by commas. */
function cpuList(value: unknown, field: string): string {
  const ok =
    typeof value === 'string' &&
    value.length <= 1024 &&
    /^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$/u.test(value) &&
    value.split(',').every((range) => {
      const [a, b = a] = range.split('-').map(Number);
      return a! < 4096 && b! < 4096 && a! <= b!;
    });
  if (!ok) throw new InvalidArgumentError(field, `${JSON.stringify(value)} is not a cpu list like "0-1,3" (numbers below 4096)`);
  return value;
}

/**
 * Checks an update before anything is sent: known fields only, each in its range, at least one
 * field, and `memory.swap` with its `memory.limit`. Returns a fresh copy holding only the given
 * fields; throws {@link InvalidArgumentError} naming the field.
 */
export function checkResources(resources: unknown, field = 'resources'): ContainerResources {
  const r = keys(resources, field, ['memory', 'cpu', 'pids', 'blockIO']);
  const out: ContainerResources = {};
  if (r['memory'] !== undefined) {
    const m = keys(r['memory'], `${field}.memory`, ['limit', 'reservation', 'swap']);
    const memory: NonNullable<ContainerResources['memory']> = {};
    if (m['limit'] !== undefined) memory.limit = limitOrNone(m['limit'], `${field}.memory.limit`, MIN_MEMORY_LIMIT, Number.MAX_SAFE_INTEGER);
    if (m['reservation'] !== undefined) memory.reservation = validate.integer(m['reservation'], `${field}.memory.reservation`, -1, Number.MAX_SAFE_INTEGER);
    if (m['swap'] !== undefined) {
      const swap = validate.integer(m['swap'], `${field}.memory.swap`, -1, Number.MAX_SAFE_INTEGER);
      if (swap > 0 && (memory.limit === undefined || memory.limit === -1)) {
        throw new InvalidArgumentError(`${field}.memory.swap`, 'is memory + swap: it needs a memory.limit in the same update (or -1 for no swap limit)');
      }
      if (swap > 0 && swap < memory.limit!) throw new InvalidArgumentError(`${field}.memory.swap`, 'is memory + swap: it must not be below memory.limit');
      memory.swap = swap;
    }
    out.memory = memory;
  }
  if (r['cpu'] !== undefined) {
    const c = keys(r['cpu'], `${field}.cpu`, ['shares', 'quota', 'period', 'cpus', 'mems']);
    const cpu: NonNullable<ContainerResources['cpu']> = {};
    if (c['shares'] !== undefined) cpu.shares = validate.integer(c['shares'], `${field}.cpu.shares`, 2, 262_144);
    if (c['quota'] !== undefined) cpu.quota = limitOrNone(c['quota'], `${field}.cpu.quota`, 1000, MAX_CPU_QUOTA_US);
    if (c['period'] !== undefined) cpu.period = validate.integer(c['period'], `${field}.cpu.period`, 1000, 1_000_000);
    if (c['cpus'] !== undefined) cpu.cpus = cpuList(c['cpus'], `${field}.cpu.cpus`);
    if (c['mems'] !== undefined) cpu.mems = cpuList(c['mems'], `${field}.cpu.mems`);
    out.cpu = cpu;
  }
  if (r['pids'] !== undefined) {
    const p = keys(r['pids'], `${field}.pids`, ['limit']);
    out.pids = { limit: validate.integer(p['limit'], `${field}.pids.limit`, -1, MAX_PIDS) };
  }
  if (r['blockIO'] !== undefined) {
    const b = keys(r['blockIO'], `${field}.blockIO`, ['weight']);
    out.blockIO = {};
    if (b['weight'] !== undefined) out.blockIO.weight = validate.integer(b['weight'], `${field}.blockIO.weight`, 10, 1000);
  }
  const count = [out.memory, out.cpu, out.blockIO].reduce((n, part) => n + (part ? Object.keys(part).length : 0), out.pids ? 1 : 0);
  if (count === 0) throw new InvalidArgumentError(field, 'holds nothing to update');
  return out;
}

/** What {@link resourcesFromOci} kept of an OCI `linux.resources`, and what it left out. */
export interface OciResourcesUpdate {
  /** The fields an update can change, unset ones (runc's zeros) left out; `null` when none is set. */
  resources: ContainerResources | null;
  /** Dotted names of the fields given that an update does not change (`devices`, `hugepageLimits`, `memory.kernel`, ...). */
  ignored: string[];
}

/**
 * The part of an OCI `linux.resources` object (what `runc update --resources -` reads, what
 * containerd's shim sends: the whole new resources of the container) that
 * {@link checkResources} takes: memory limit, reservation and swap; cpu shares, quota, period,
 * cpus, mems; pids limit; block I/O weight. As runc does, a zero or empty value means "not set"
 * and is left out (a pids limit of 0 too); the fields vmpod does not update (device rules,
 * hugepage limits, `unified`, realtime cpu, kernel memory, swappiness, throttling, ...) are
 * named in `ignored`, for the caller to log. Values are not checked here: pass the result to
 * `update()`, which checks them.
 */
export function resourcesFromOci(oci: unknown): OciResourcesUpdate {
  const ignored: string[] = [];
  if (typeof oci !== 'object' || oci === null || Array.isArray(oci)) throw new InvalidArgumentError('resources', 'must be an object (OCI linux.resources)');
  const set = (v: unknown): boolean => v !== undefined && v !== null && v !== 0 && v !== '';
  const pick = (part: string, from: unknown, keys: readonly string[]): Record<string, unknown> | undefined => {
    if (from === undefined || from === null) return undefined;
    if (typeof from !== 'object' || Array.isArray(from)) throw new InvalidArgumentError(`resources.${part}`, 'must be an object');
    const out: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(from)) {
      if (keys.includes(key)) {
        if (set(value)) out[key] = value;
      } else if (value !== undefined && value !== null) {
        ignored.push(`${part}.${key}`);
      }
    }
    return Object.keys(out).length > 0 ? out : undefined;
  };
  const r = oci as Record<string, unknown>;
  const resources: ContainerResources = {};
  const memory = pick('memory', r['memory'], ['limit', 'reservation', 'swap']);
  if (memory) resources.memory = memory;
  const cpu = pick('cpu', r['cpu'], ['shares', 'quota', 'period', 'cpus', 'mems']);
  if (cpu) resources.cpu = cpu;
  const pids = pick('pids', r['pids'], ['limit']);
  if (pids) resources.pids = pids as { limit: number };
  const blockIO = pick('blockIO', r['blockIO'], ['weight']);
  if (blockIO) resources.blockIO = blockIO;
  for (const [key, value] of Object.entries(r)) {
    if (!['memory', 'cpu', 'pids', 'blockIO'].includes(key) && value !== undefined && value !== null) ignored.push(key);
  }
  return { resources: Object.keys(resources).length > 0 ? resources : null, ignored };
}
