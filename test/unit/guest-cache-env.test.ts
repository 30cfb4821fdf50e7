// $VMPOD_GUEST_CACHE is the guest cache of every call that names none: `vmpod guest build` and
// buildGuestAssets() build where `vmpod run` and a sandbox look (they used /var/cache/vmpod/guest
// whatever the variable said, so a run after such a build built the assets again).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { buildGuestAssets } from '../../src/guest/build.js';
import { DEFAULT_GUEST_CACHE_DIR, GuestAssetsError, defaultGuestCacheDir, resolveGuestAssets } from '../../src/guest/index.js';

const saved = process.env['VMPOD_GUEST_CACHE'];
const temps: string[] = [];

afterEach(() => {
  if (saved === undefined) delete process.env['VMPOD_GUEST_CACHE'];
  else process.env['VMPOD_GUEST_CACHE'] = saved;
  for (const dir of temps.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

describe('the guest cache directory from $VMPOD_GUEST_CACHE', () => {
  it('is the default of defaultGuestCacheDir(), else /var/cache/vmpod/guest', () => {
    delete process.env['VMPOD_GUEST_CACHE'];
    expect(defaultGuestCacheDir()).toBe(DEFAULT_GUEST_CACHE_DIR);
    process.env['VMPOD_GUEST_CACHE'] = '/somewhere/else';
    expect(defaultGuestCacheDir()).toBe('/somewhere/else');
  });

  it('is where resolveGuestAssets() looks', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-cache-env-'));
    temps.push(dir);
    process.env['VMPOD_GUEST_CACHE'] = dir;
    const error = await resolveGuestAssets().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(GuestAssetsError);
    expect((error as Error).message).toContain(`guest assets in ${dir}:`);
  });

  it('is what buildGuestAssets() builds into (checked first: a relative one is refused)', async () => {
    process.env['VMPOD_GUEST_CACHE'] = 'relative/cache';
    const error = await buildGuestAssets({ agent: '/nonexistent/vmpod-agent' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect((error as Error).message).toContain('cacheDir');
  });
});
