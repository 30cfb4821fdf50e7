/**
 * A short soak (the long one is `npm run soak -- 200`, figures in docs/security.md): sandbox lives
 * with faults injected at random moments (kill -9 of the orchestrating process, of the VM, of
 * virtiofsd, SIGSTOP of the VM), each followed by a delete from another process; the census of
 * fds, mounts, namespaces, links, daemons, hugepages, reservations and state files must not grow.
 * Fixed seeds: a failure is reproduced with `npm run soak -- N --seed S`.
 */
import { describe, expect, it } from 'vitest';
import { runSoak } from '../soak/soak.js';
import { skipReason as vmSkip } from './sandbox/fixture.js';
import { skipReason as networkSkip } from './network-sandbox/fixture.js';

const root = process.getuid?.() === 0;

describe.skipIf(!root)('soak (needs root)', () => {
  it('30 lives on the stand-in hypervisor, faults at random: every delete succeeds, nothing grows', { timeout: 600_000 }, async () => {
    const lines: string[] = [];
    const report = await runSoak({ cycles: 30, standIn: true, seed: 20261207, log: (l) => lines.push(l) });
    expect(report.deleteFailures).toEqual([]);
    expect(report.leaks, lines.join('\n')).toEqual({});
    expect(Object.values(report.faults).reduce((a, b) => a + b, 0)).toBe(30);
    expect(report.faults['kill-orchestrator']).toBeGreaterThan(0);
  });

  it.skipIf(vmSkip ?? networkSkip)('8 lives on QEMU with a CNI bridge network, faults at random: every delete succeeds, nothing grows', { timeout: 900_000 }, async () => {
    const lines: string[] = [];
    const report = await runSoak({ cycles: 8, seed: 2135451981, log: (l) => lines.push(l) });
    expect(report.deleteFailures).toEqual([]);
    expect(report.leaks, lines.join('\n')).toEqual({});
  });
});
