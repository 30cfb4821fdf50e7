/**
 * `update --resources`: the OCI `linux.resources` a caller sends, narrowed to what vmpod's
 * `Container.update()` sets in the guest (memory limit/reservation/swap, cpu shares/quota/
 * period/cpus/mems, pids limit, block I/O weight). What runc's callers also send (kernel memory,
 * swappiness, devices, hugepage limits, unified, network classes) is left out, and so are the
 * zeros and nulls with which they mean "unchanged" (runc reads them so too); the pids limit's 0
 * stays (no limit).
 *
 * @module
 */
import type { ContainerResources } from '../agent/resources.js';

const KEYS: Record<string, readonly string[]> = {
  memory: ['limit', 'reservation', 'swap'],
  cpu: ['shares', 'quota', 'period', 'cpus', 'mems'],
  pids: ['limit'],
  blockIO: ['weight'],
};

/** The part of `resources` vmpod can apply. */
export function knownResources(resources: Record<string, unknown>): ContainerResources {
  const out: Record<string, Record<string, unknown>> = {};
  for (const [group, keys] of Object.entries(KEYS)) {
    const value = resources[group];
    if (typeof value !== 'object' || value === null) continue;
    for (const key of keys) {
      const v = (value as Record<string, unknown>)[key];
      if (v === undefined || v === null || v === '') continue;
      if (v === 0 && !(group === 'pids' && key === 'limit')) continue;
      (out[group] ??= {})[key] = v;
    }
  }
  return out as ContainerResources;
}
