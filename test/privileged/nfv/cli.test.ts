/**
 * `vmpod run` with volumes and NFV options, end to end through the CLI: `-v HOST:GUEST[:ro]`,
 * `--hugepages` (guest RAM on host hugepages), `--guest-hugepages N` (a hugetlbfs at
 * /dev/hugepages), and `--device` on a host without VFIO (a clear error, nothing left).
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hugepagePool } from '../../../src/devices/hugepages.js';
import { expectNothingLeft, forceCleanup, makeStateDir, skipReason, vmpod } from '../sandbox/fixture.js';

const hasVfio = (await fs.stat('/sys/bus/pci/drivers/vfio-pci').catch(() => undefined)) !== undefined;

describe.skipIf(skipReason)(`vmpod run with volumes and NFV options${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  let work: string;

  beforeAll(async () => {
    stateDir = await makeStateDir();
    work = await fs.mkdtemp(path.join(stateDir, 'work-'));
  });

  afterAll(async () => {
    try {
      await fs.rm(work, { recursive: true, force: true });
      await expectNothingLeft(stateDir);
    } finally {
      await forceCleanup(stateDir);
    }
  });

  it('mounts -v volumes read-write and read-only, with guest RAM on hugepages and guest hugepages at /dev/hugepages', async () => {
    const data = path.join(work, 'data');
    const conf = path.join(work, 'conf');
    await fs.mkdir(data);
    await fs.mkdir(conf);
    await fs.writeFile(path.join(conf, 'app.conf'), 'answer=42\n');
    const pool = (await hugepagePool('2M')).total;
    const r = await vmpod(stateDir, [
      'run', '--rm', '-q', '-v', `${data}:/data`, '-v', `${conf}:/etc/app:ro`, '--hugepages', '--guest-hugepages', '2',
      '--', 'sh', '-c', 'cat /etc/app/app.conf; echo out > /data/result; touch /etc/app/x 2>/dev/null || echo read-only; grep " /dev/hugepages " /proc/mounts | cut -d" " -f3; grep HugePages_Total /proc/meminfo',
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.split('\n')).toEqual(['answer=42', 'read-only', 'hugetlbfs', expect.stringMatching(/^HugePages_Total:\s+2$/u), '']);
    expect(await fs.readFile(path.join(data, 'result'), 'utf8')).toBe('out\n');
    expect((await hugepagePool('2M')).total).toBe(pool);
  });

  it('rejects a malformed -v, leaving nothing', async () => {
    const bad = await vmpod(stateDir, ['run', '--rm', '-v', 'nocolon', '--', 'true']);
    expect(bad.code).toBe(2); // a usage error
    expect(bad.stderr).toMatch(/expected HOST:GUEST/u);
    expect(await fs.readdir(path.join(stateDir, 'sandboxes')).catch(() => [])).toEqual([]);
  });

  it.skipIf(hasVfio)(`reports a --device that cannot be passed on a host without vfio-pci, leaving nothing${hasVfio ? ' (skipped: vfio-pci is loaded here)' : ''}`, async () => {
    const dev = await vmpod(stateDir, ['run', '--rm', '--device', '0000:00:00.0', '--', 'true']);
    expect(dev.code).toBe(125); // vmpod's own error, before any container ran
    expect(dev.stderr).toMatch(/vfio-pci driver is not loaded/u);
    expect(await fs.readdir(path.join(stateDir, 'sandboxes')).catch(() => [])).toEqual([]);
  });
});
