// `vmpod update`'s options as the library's ContainerResources, and the usage errors of
// `update`, `pause` and `resume` that come before any sandbox is touched.
import { describe, expect, it } from 'vitest';
import { parseArgs } from '../../src/cli/args.js';
import { UsageError } from '../../src/cli/io.js';
import { pause, resume, update, updateResources } from '../../src/cli/commands/pause.js';

const resources = (...argv: string[]) => updateResources(parseArgs([...argv, 'box/c'], update.spec).options);

describe('vmpod update options', () => {
  it('maps each option to its OCI resource field', () => {
    expect(resources('--memory', '256', '--memory-reservation', '64')).toEqual({ memory: { limit: 256 * 2 ** 20, reservation: 64 * 2 ** 20 } });
    expect(resources('--memory', 'max', '--pids-limit', 'max')).toEqual({ memory: { limit: -1 }, pids: { limit: -1 } });
    expect(resources('--cpus', '2')).toEqual({ cpu: { quota: 200_000, period: 100_000 } });
    expect(resources('--cpu-quota', '50000', '--cpu-period', '200000', '--cpu-shares', '512', '--cpuset-cpus', '0-1', '--cpuset-mems', '0')).toEqual({
      cpu: { quota: 50_000, period: 200_000, shares: 512, cpus: '0-1', mems: '0' },
    });
    expect(resources('--cpu-quota', 'max')).toEqual({ cpu: { quota: -1 } });
    expect(resources('--pids-limit', '64', '--blkio-weight', '500')).toEqual({ pids: { limit: 64 }, blockIO: { weight: 500 } });
  });

  it.each([
    [['--memory', '0'], '--memory "0": expected a decimal integer from 1 to 1048576 (or "max" for no limit)'],
    [['--memory', '1g'], '--memory "1g"'],
    [['--memory', '-1'], '--memory "-1"'],
    [['--cpus', '0'], '--cpus "0"'],
    [['--cpus', '1.5'], '--cpus "1.5"'],
    [['--cpus', '1', '--cpu-quota', '1000'], '--cpus sets the CPU quota and period'],
    [['--cpu-shares', '1'], '--cpu-shares "1"'],
    [['--cpu-period', '999'], '--cpu-period "999"'],
    [['--pids-limit', '0'], '--pids-limit "0"'],
    [['--blkio-weight', '5'], '--blkio-weight "5"'],
    [[], 'give at least one limit to change'],
  ])('refuses %j', (argv, message) => {
    expect(() => resources(...argv)).toThrow(UsageError);
    expect(() => resources(...argv)).toThrow(message);
  });

  it('refuses a bad target or a cpu list before attaching to any sandbox', async () => {
    await expect(update.run(parseArgs(['--memory', '64'], update.spec))).rejects.toThrow(UsageError);
    await expect(update.run(parseArgs(['--memory', '64', 'a', 'b'], update.spec))).rejects.toThrow('give exactly one ID or ID/CONTAINER');
    await expect(update.run(parseArgs(['--cpuset-cpus', '2-1', 'nosuch-sandbox'], update.spec))).rejects.toThrow('resources.cpu.cpus');
    await expect(pause.run(parseArgs([], pause.spec))).rejects.toThrow(UsageError);
    await expect(resume.run(parseArgs(['a', 'b'], resume.spec))).rejects.toThrow(UsageError);
  });
});
