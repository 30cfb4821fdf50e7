/** What the NFV tests that put a sandbox's vhost-user NIC on testpmd share. */
import fs from 'node:fs/promises';
import { expect } from 'vitest';
import type { Testpmd } from '../../../benchmarks/lib/testpmd.js';
import { hugepagePool } from '../../../src/devices/hugepages.js';
import type { Sandbox } from '../../../src/sandbox/sandbox.js';
import { expectNothingLeft, forceCleanup } from '../sandbox/fixture.js';

/**
 * Deletes the sandbox, stops testpmd, then checks that nothing is left: the state dir, the 2 MiB
 * pool as it was before (`poolBefore`), testpmd's DPDK run folder (`prefix`).
 */
export async function tearDown(parts: { sandbox: Sandbox | undefined; testpmd: Testpmd | undefined; stateDir: string; poolBefore: number; prefix: string }): Promise<void> {
  try {
    await parts.sandbox?.delete({ force: true });
    await parts.testpmd?.stop();
    await expectNothingLeft(parts.stateDir);
    expect((await hugepagePool('2M')).total).toBe(parts.poolBefore);
    expect(await fs.readdir('/var/run/dpdk').catch(() => [])).not.toContain(parts.prefix);
  } finally {
    await forceCleanup(parts.stateDir);
  }
}
