import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { resolveGuestAssets, verifyGuestAssets, type GuestManifest } from '../../src/guest/assets.js';
import { GuestAssetsError } from '../../src/guest/errors.js';

let cache: string;
let dir: string;

function record(name: string, content: string): { name: string; size: number; sha256: string } {
  fs.writeFileSync(path.join(dir, name), content);
  return { name, size: Buffer.byteLength(content), sha256: createHash('sha256').update(content).digest('hex') };
}

function writeManifest(overrides: Record<string, unknown> = {}): GuestManifest {
  const manifest = {
    format: 1,
    id: '0123456789abcdef0123456789abcdef',
    builderVersion: 1,
    kernelRelease: '6.1.0-test',
    kernelFormat: 'vmlinux',
    inputs: { kernelPackage: { name: 'k', version: '1', sha256: 'x' }, busyboxSha256: 'b', agentSha256: 'a', modules: [] },
    modules: { load: [], builtin: [] },
    initMarker: 'vmpod-init: ready',
    files: { kernel: record('vmlinux', 'KERNEL'), initramfs: record('initramfs.cpio', 'INITRAMFS'), config: record('config', 'CONFIG_PVH=y\n') },
    ...overrides,
  };
  fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(manifest));
  return manifest as unknown as GuestManifest;
}

beforeEach(() => {
  cache = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-assets-'));
  dir = path.join(cache, 'assets', '0123456789abcdef0123456789abcdef');
  fs.mkdirSync(dir, { recursive: true });
  fs.symlinkSync(path.join('assets', '0123456789abcdef0123456789abcdef'), path.join(cache, 'current'));
});
afterEach(() => fs.rmSync(cache, { recursive: true, force: true }));

async function failure(promise: Promise<unknown>): Promise<GuestAssetsError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(GuestAssetsError);
  expect((error as GuestAssetsError).code).toBe('ERR_VMPOD_GUEST_ASSETS');
  return error as GuestAssetsError;
}

describe('verifyGuestAssets', () => {
  it('accepts assets that match their manifest', async () => {
    const manifest = writeManifest();
    await expect(verifyGuestAssets(dir)).resolves.toEqual(manifest);
    await expect(verifyGuestAssets(dir, 'size')).resolves.toEqual(manifest);
  });

  it('notices a changed file of the same size (hash), a size change, a missing file', async () => {
    const manifest = writeManifest();
    await expect(verifyGuestAssets(dir)).resolves.toEqual(manifest);
    fs.writeFileSync(path.join(dir, 'vmlinux'), 'KERNEX');
    expect((await failure(verifyGuestAssets(dir))).message).toMatch(/vmlinux does not match its SHA-256.*vmpod guest build/);
    // The size check alone cannot see a change of the same size: it accepts the manifest as it is.
    await expect(verifyGuestAssets(dir, 'size')).resolves.toEqual(manifest);
    fs.writeFileSync(path.join(dir, 'initramfs.cpio'), 'SHORT');
    expect((await failure(verifyGuestAssets(dir, 'size'))).message).toMatch(/initramfs.cpio has 5 bytes, the manifest says 9/);
    fs.rmSync(path.join(dir, 'config'));
    writeManifest();
    fs.rmSync(path.join(dir, 'config'));
    expect((await failure(verifyGuestAssets(dir))).message).toMatch(/config is missing/);
  });

  it.each([
    ['invalid JSON', '{'],
    ['another format', JSON.stringify({ format: 2 })],
    ['a file name with a slash', null],
    ['an array', '[]'],
  ])('rejects a manifest with %s', async (_name, text) => {
    if (text === null) {
      const good = writeManifest();
      writeManifest({ files: { ...good.files, kernel: { name: '../../etc/passwd', size: 1, sha256: '0'.repeat(64) } } });
    } else {
      fs.writeFileSync(path.join(dir, 'manifest.json'), text);
    }
    const error = await failure(verifyGuestAssets(dir));
    if (text === null) expect(error.message).toMatch(/files.kernel is malformed/);
  });

  it('rejects a missing directory with the fix', async () => {
    expect((await failure(verifyGuestAssets(path.join(cache, 'nope')))).message).toMatch(/vmpod guest build/);
  });
});

describe('resolveGuestAssets', () => {
  it('resolves the current build', async () => {
    writeManifest();
    const assets = await resolveGuestAssets({ cacheDir: cache });
    expect(assets).toMatchObject({
      dir,
      id: '0123456789abcdef0123456789abcdef',
      kernel: path.join(dir, 'vmlinux'),
      initramfs: path.join(dir, 'initramfs.cpio'),
      rootfsImage: undefined,
    });
  });

  it('applies user overrides, and needs no build when kernel and initramfs are both given', async () => {
    writeManifest();
    const kernel = path.join(cache, 'my-vmlinux');
    const initramfs = path.join(cache, 'my.cpio');
    const rootfs = path.join(cache, 'rootfs.ext4');
    for (const f of [kernel, initramfs, rootfs]) fs.writeFileSync(f, 'x');
    const partial = await resolveGuestAssets({ cacheDir: cache, kernel, rootfsImage: rootfs });
    expect(partial).toMatchObject({ kernel, initramfs: path.join(dir, 'initramfs.cpio'), rootfsImage: rootfs });
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-empty-'));
    try {
      const full = await resolveGuestAssets({ cacheDir: empty, kernel, initramfs });
      expect(full).toEqual({ dir: undefined, id: undefined, kernel, initramfs, rootfsImage: undefined, manifest: undefined });
      expect((await failure(resolveGuestAssets({ cacheDir: empty }))).message).toMatch(/no guest assets have been built: run "vmpod guest build"/);
    } finally {
      fs.rmSync(empty, { recursive: true, force: true });
    }
  });

  it('rejects a nonexistent or relative override with a typed error naming the field', async () => {
    writeManifest();
    const missing = await resolveGuestAssets({ cacheDir: cache, kernel: '/nonexistent/vmlinux' }).catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(InvalidArgumentError);
    expect(missing).toMatchObject({ field: 'kernel', message: expect.stringMatching(/does not exist/) as unknown });
    await expect(resolveGuestAssets({ cacheDir: cache, initramfs: 'rel.cpio' })).rejects.toMatchObject({ field: 'initramfs' });
    await expect(resolveGuestAssets({ cacheDir: cache, kernel: cache })).rejects.toMatchObject({ field: 'kernel' });
  });
});
