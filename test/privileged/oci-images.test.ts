/**
 * The shared test image (helpers/oci-images.ts) is what the other image and runtime tests
 * assume it is: checked with independent tools (umoci unpack, skopeo inspect, tar).
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { busyboxImage, imageSkipReason, removeTestImages, SKOPEO, UMOCI } from './helpers/oci-images.js';

const exec = promisify(execFile);
const skip = process.getuid?.() !== 0 ? 'needs root (umoci unpack keeps owners)' : await imageSkipReason();

describe.skipIf(skip !== undefined)('test images (oci-images helper)', () => {
  afterAll(async () => {
    const dir = (await busyboxImage()).dir;
    await removeTestImages();
    expect(await fs.stat(dir).catch(() => undefined)).toBeUndefined();
  });

  it('is a three-layer layout whose unpacked rootfs has busybox, layer 3 and not what layer 2 removed', async () => {
    const image = await busyboxImage();
    const bundle = path.join(image.dir, 'bundle-check');
    try {
      await exec(UMOCI, ['unpack', '--image', `${image.layout}:${image.tag}`, bundle]);
      const rootfs = path.join(bundle, 'rootfs');
      expect(await fs.readFile(path.join(rootfs, 'etc/motd'), 'utf8')).toBe(image.motd);
      expect(await fs.lstat(path.join(rootfs, image.whiteout)).catch(() => undefined)).toBeUndefined();
      expect(await fs.readlink(path.join(rootfs, 'bin/sh'))).toBe('busybox');
      expect((await fs.stat(path.join(rootfs, 'home/app'))).uid).toBe(1000);
      const { stdout } = await exec(path.join(rootfs, 'bin/busybox'), ['echo', 'ran']);
      expect(stdout).toBe('ran\n');
      const config = JSON.parse(await fs.readFile(path.join(bundle, 'config.json'), 'utf8'));
      expect(config.process.args).toEqual(['sh']);
      expect(config.process.env).toContain('PATH=/usr/sbin:/usr/bin:/sbin:/bin');
    } finally {
      await fs.rm(bundle, { recursive: true, force: true });
    }
  });

  it('has the same image in its oci-archive and docker-archive', async () => {
    const image = await busyboxImage();
    const policy = path.join(image.dir, 'policy.json');
    const inspect = async (ref: string) =>
      JSON.parse((await exec(SKOPEO, ['--policy', policy, 'inspect', '--config', ref])).stdout) as {
        rootfs: { diff_ids: string[] };
        config: { Cmd: string[]; Labels: Record<string, string> };
      };
    const layout = await inspect(image.ociRef);
    expect(layout.rootfs.diff_ids).toHaveLength(3);
    expect(layout.config.Cmd).toEqual(['sh']);
    expect(layout.config.Labels).toEqual({ 'org.vmpod.test': 'busybox' });
    expect((await inspect(image.ociArchiveRef)).rootfs.diff_ids).toEqual(layout.rootfs.diff_ids);
    expect((await inspect(`docker-archive:${image.dockerArchive}`)).rootfs.diff_ids).toEqual(layout.rootfs.diff_ids);
    const { stdout } = await exec('tar', ['-tf', image.dockerArchive]);
    expect(stdout.split('\n')).toContain('manifest.json');
  });
});
