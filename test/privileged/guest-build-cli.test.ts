/**
 * `vmpod guest build` end to end, into a cache directory of its own: builds, skips when nothing
 * changed (same id), rebuilds with another id when an input changed (the agent, given with
 * VMPOD_AGENT). To stay cheap, the cache's debs/ is seeded with the kernel package an earlier
 * build downloaded (/var/cache/vmpod/guest/debs or the test cache): the build checks it against
 * apt's SHA-256 and uses it without `apt-get download`. Without such a package the test
 * downloads it from Debian's repository (~27 MB).
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TEST_CACHE_DIR } from './guest-fixture.js';
import { vmpod } from './sandbox/fixture.js';

const skipReason = process.getuid?.() !== 0 ? 'needs root (apt, the cache)' : undefined;
const AGENT = path.resolve('build/Release/vmpod-agent');

interface BuildJson {
  built: boolean;
  id: string;
  dir: string;
  kernel: string;
  initramfs: string;
  kernelRelease: string;
}

describe.skipIf(skipReason)(`vmpod guest build${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let work: string;
  let cacheDir: string;
  let agent: string;
  let seeded: string[];

  beforeAll(async () => {
    work = await fs.mkdtemp(path.join(os.tmpdir(), 'vt-guestbuild-'));
    cacheDir = path.join(work, 'cache');
    await fs.mkdir(path.join(cacheDir, 'debs'), { recursive: true });
    for (const from of ['/var/cache/vmpod/guest/debs', path.join(TEST_CACHE_DIR, 'debs')]) {
      for (const deb of (await fs.readdir(from).catch(() => [] as string[])).filter((f) => f.endsWith('.deb'))) {
        await fs.copyFile(path.join(from, deb), path.join(cacheDir, 'debs', deb)).catch(() => undefined);
      }
    }
    seeded = (await fs.readdir(path.join(cacheDir, 'debs'))).sort();
    agent = path.join(work, 'vmpod-agent');
    await fs.copyFile(AGENT, agent);
    await fs.chmod(agent, 0o755);
  });

  afterAll(async () => {
    await fs.rm(work, { recursive: true, force: true });
  });

  /** `vmpod guest build --cache-dir CACHE --json` with VMPOD_AGENT set to the test's agent. */
  async function build(): Promise<BuildJson> {
    const previous = process.env['VMPOD_AGENT'];
    process.env['VMPOD_AGENT'] = agent; // vmpod() passes this process's environment on
    try {
      const r = await vmpod(path.join(work, 'state'), ['guest', 'build', '--cache-dir', cacheDir, '--json']);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      return JSON.parse(r.stdout) as BuildJson;
    } finally {
      if (previous === undefined) delete process.env['VMPOD_AGENT'];
      else process.env['VMPOD_AGENT'] = previous;
    }
  }

  it('builds, skips when nothing changed, rebuilds with another id when the agent changed', async () => {
    const first = await build();
    expect(first).toMatchObject({ built: true, dir: path.join(cacheDir, 'assets', first.id) });
    expect(first.kernelRelease).toMatch(/-cloud-amd64$/u);
    expect((await fs.stat(first.kernel)).size).toBeGreaterThan(1 << 20);
    expect((await fs.stat(first.initramfs)).size).toBeGreaterThan(1 << 20);
    expect(await fs.readlink(path.join(cacheDir, 'current'))).toBe(path.join('assets', first.id));

    const again = await build();
    expect(again).toEqual({ ...first, built: false });

    // Another agent (one byte more at its end): another id, built next to the first.
    await fs.appendFile(agent, Buffer.from([0]));
    const changed = await build();
    expect(changed.built).toBe(true);
    expect(changed.id).not.toBe(first.id);
    expect(changed.kernelRelease).toBe(first.kernelRelease);
    expect(await fs.readlink(path.join(cacheDir, 'current'))).toBe(path.join('assets', changed.id));
    // The seeded kernel package was used (nothing downloaded next to it), no download folder left.
    const debs = (await fs.readdir(path.join(cacheDir, 'debs'))).sort();
    expect(debs.filter((f) => !f.endsWith('.deb'))).toEqual([]);
    if (seeded.length > 0) expect(debs).toEqual(seeded);
  });
});
