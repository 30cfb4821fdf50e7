/**
 * A container's guest cgroup statistics as the `google.protobuf.Any` a task's Stats answers with:
 * containerd's cgroup v2 `io.containerd.cgroups.v2.Metrics` (the agent reads cgroup v2 files in
 * the guest), under the bare type URL containerd's typeurl registry gives it. containerd 1.6's CRI
 * decodes it for ContainerStats: CPU from `cpu.usage_usec`, the memory working set from
 * `memory.usage` minus `memory.inactive_file`, the available bytes from `memory.usage_limit`.
 *
 * A value the guest could not read (`null`: no such controller, or a limit of "max") is sent as 0,
 * which is what containerd's own cgroup reader reports for a missing file and what its CRI treats
 * as "no limit". The guest's `memory.peak` has no field in this message (containerd 1.6's cgroups
 * package has none), so it is not sent.
 *
 * @module
 */
import type { ContainerStats } from '../agent/messages.js';
import { encodeAny } from './proto/index.js';
import type { AnyMessage } from './proto/index.js';

/** The type URL of containerd's cgroup v2 metrics (a protobuf full name, no URL prefix). */
export const CGROUP2_METRICS_TYPE = 'io.containerd.cgroups.v2.Metrics';

/** The fields of `io.containerd.cgroups.v2.Metrics` vmpod fills (protobufjs camelCase names). */
export interface Cgroup2Metrics {
  pids: { current: number; limit: number };
  cpu: { usageUsec: number; userUsec: number; systemUsec: number };
  memory: { usage: number; usageLimit: number };
  memoryEvents: { oomKill: number };
}

const n = (value: number | null): number => value ?? 0;

/** The cgroup v2 metrics message (as a plain object) for the agent's stats of one container. */
export function cgroup2Metrics(stats: ContainerStats): Cgroup2Metrics {
  return {
    pids: { current: n(stats.pids.current), limit: n(stats.pids.max) },
    cpu: { usageUsec: n(stats.cpu.usageUsec), userUsec: n(stats.cpu.userUsec), systemUsec: n(stats.cpu.systemUsec) },
    memory: { usage: n(stats.memory.currentBytes), usageLimit: n(stats.memory.maxBytes) },
    memoryEvents: { oomKill: n(stats.memory.oomKills) },
  };
}

/** The agent's stats as the `Any` of a StatsResponse (`io.containerd.cgroups.v2.Metrics`). */
export function metricsAny(stats: ContainerStats): AnyMessage {
  return encodeAny(CGROUP2_METRICS_TYPE, cgroup2Metrics(stats));
}
