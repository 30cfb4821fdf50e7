/** `vmpod pause`, `vmpod resume` and `vmpod update`: a container's freezer and limits. */
import type { ContainerResources } from '../../agent/resources.js';
import { checkResources, MAX_CPU_QUOTA_US, MAX_PIDS } from '../../agent/resources.js';
import { integerOption, type ParsedArgs } from '../args.js';
import { COMMON_OPTIONS, type Command } from '../command.js';
import { UsageError } from '../io.js';
import { CPUS } from '../limits.js';
import { resolveContainer } from '../target.js';

/** `update --memory` and `--memory-reservation`, in MiB (the most a sandbox can have). */
export const UPDATE_MEMORY_MIB = { min: 1, max: 1_048_576 };
/** The period `--cpus N` uses: N whole CPUs are N periods of CPU time per period. */
const CPUS_PERIOD_US = 100_000;

function oneTarget(parsed: ParsedArgs): string {
  if (parsed.positionals.length !== 1) throw new UsageError('give exactly one ID or ID/CONTAINER');
  return parsed.positionals[0]!;
}

/** `max` (no limit: -1), or a decimal integer in the range. */
function limitOption(name: string, value: string, min: number, max: number): number {
  return value === 'max' ? -1 : integerOption(name, value, min, max, 'or "max" for no limit');
}

/** `update`'s options as {@link ContainerResources}; throws {@link UsageError}. */
export function updateResources(o: ParsedArgs['options']): ContainerResources {
  const text = (name: string): string | undefined => (typeof o[name] === 'string' ? (o[name] as string) : undefined);
  const resources: ContainerResources = {};
  const memory: NonNullable<ContainerResources['memory']> = {};
  const mib = 1024 * 1024;
  const memoryValue = text('memory');
  if (memoryValue !== undefined) {
    const n = limitOption('--memory', memoryValue, UPDATE_MEMORY_MIB.min, UPDATE_MEMORY_MIB.max);
    memory.limit = n === -1 ? -1 : n * mib;
  }
  const reservation = text('memory-reservation');
  if (reservation !== undefined) {
    const n = limitOption('--memory-reservation', reservation, 0, UPDATE_MEMORY_MIB.max);
    memory.reservation = n === -1 ? -1 : n * mib;
  }
  if (Object.keys(memory).length > 0) resources.memory = memory;

  const cpu: NonNullable<ContainerResources['cpu']> = {};
  const cpus = text('cpus');
  if (cpus !== undefined) {
    if (text('cpu-quota') !== undefined || text('cpu-period') !== undefined) throw new UsageError('--cpus sets the CPU quota and period: give it or --cpu-quota/--cpu-period, not both');
    const n = integerOption('--cpus', cpus, CPUS.min, CPUS.max);
    cpu.quota = n * CPUS_PERIOD_US;
    cpu.period = CPUS_PERIOD_US;
  }
  const shares = text('cpu-shares');
  if (shares !== undefined) cpu.shares = integerOption('--cpu-shares', shares, 2, 262_144);
  const quota = text('cpu-quota');
  if (quota !== undefined) cpu.quota = limitOption('--cpu-quota', quota, 1000, MAX_CPU_QUOTA_US);
  const period = text('cpu-period');
  if (period !== undefined) cpu.period = integerOption('--cpu-period', period, 1000, 1_000_000);
  const cpusetCpus = text('cpuset-cpus');
  if (cpusetCpus !== undefined) cpu.cpus = cpusetCpus;
  const cpusetMems = text('cpuset-mems');
  if (cpusetMems !== undefined) cpu.mems = cpusetMems;
  if (Object.keys(cpu).length > 0) resources.cpu = cpu;

  const pids = text('pids-limit');
  if (pids !== undefined) resources.pids = { limit: limitOption('--pids-limit', pids, 1, MAX_PIDS) };
  const weight = text('blkio-weight');
  if (weight !== undefined) resources.blockIO = { weight: integerOption('--blkio-weight', weight, 10, 1000) };
  if (Object.keys(resources).length === 0) throw new UsageError('give at least one limit to change');
  return resources;
}

export const pause: Command = {
  words: ['pause'],
  summary: 'freeze the processes of a container (the VM runs on)',
  usage: `Usage: vmpod pause ID[/CONTAINER]

Freezes every process of the container (its cgroup in the guest; runc pause, docker pause) until
"vmpod resume". The sandbox's VM and its other containers run on. While it is paused, exec is
refused and signals wait for the resume (KILL does not).`,
  spec: { options: [...COMMON_OPTIONS] },
  async run(parsed) {
    const { sandbox, container } = await resolveContainer(oneTarget(parsed), 'pause');
    try {
      await container.pause();
    } finally {
      sandbox.detach();
    }
    return 0;
  },
};

export const resume: Command = {
  words: ['resume'],
  summary: 'thaw a paused container',
  usage: `Usage: vmpod resume ID[/CONTAINER]

Lets the processes of a container paused with "vmpod pause" run again (runc resume, docker unpause).`,
  spec: { options: [...COMMON_OPTIONS] },
  async run(parsed) {
    const { sandbox, container } = await resolveContainer(oneTarget(parsed), 'resume');
    try {
      await container.resume();
    } finally {
      sandbox.detach();
    }
    return 0;
  },
};

export const update: Command = {
  words: ['update'],
  summary: "change a container's memory, CPU and pids limits",
  usage: `Usage: vmpod update [OPTIONS] ID[/CONTAINER]

Changes the limits of a created, running or paused container in its cgroup in the guest (runc
update, docker update). Limits not given keep their values; "max" removes a limit.

  --memory MIB|max              memory.max (1 to ${UPDATE_MEMORY_MIB.max} MiB)
  --memory-reservation MIB|max  memory.low (0 to ${UPDATE_MEMORY_MIB.max} MiB)
  --cpus N                      N whole CPUs: cpu.max "N*${CPUS_PERIOD_US} ${CPUS_PERIOD_US}" (${CPUS.min} to ${CPUS.max})
  --cpu-quota US|max            cpu.max's quota (1000 to ${MAX_CPU_QUOTA_US} microseconds)
  --cpu-period US               cpu.max's period (1000 to 1000000 microseconds)
  --cpu-shares N                relative weight, cgroup v1 shares (2 to 262144), as cpu.weight
  --cpuset-cpus LIST            cpuset.cpus, e.g. 0-1,3
  --cpuset-mems LIST            cpuset.mems, e.g. 0
  --pids-limit N|max            pids.max (1 to ${MAX_PIDS})
  --blkio-weight N              block I/O weight (10 to 1000)`,
  spec: {
    options: [
      ...COMMON_OPTIONS,
      ...['memory', 'memory-reservation', 'cpus', 'cpu-quota', 'cpu-period', 'cpu-shares', 'cpuset-cpus', 'cpuset-mems', 'pids-limit', 'blkio-weight'].map(
        (long) => ({ long, type: 'string' }) as const,
      ),
    ],
  },
  async run(parsed) {
    const target = oneTarget(parsed);
    // Checked (a bad cpu list is a usage error) before the sandbox is touched.
    const resources = checkResources(updateResources(parsed.options));
    const { sandbox, container } = await resolveContainer(target, 'update');
    try {
      await container.update(resources);
    } finally {
      sandbox.detach();
    }
    return 0;
  },
};
