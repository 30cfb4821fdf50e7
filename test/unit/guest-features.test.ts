/**
 * Guest features decided from facts (kernel config + the modules /init loads), the modules a
 * feature needs, rebuilding alike, the manifest's `features` check, and vmlinux extraction from
 * an XZ payload (Debian's generic kernel) with the real `xz`.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { verifyGuestAssets, type GuestManifest } from '../../src/guest/assets.js';
import { rebuildOptions } from '../../src/guest/build.js';
import { GuestAssetsError, GuestBuildError } from '../../src/guest/errors.js';
import { featureModules, guestFeatures } from '../../src/guest/features.js';
import { extractVmlinux, parseKernelConfig } from '../../src/guest/kernel.js';

// Excerpts of the real configs of Debian 12's kernels (6.1).
const CLOUD = parseKernelConfig('CONFIG_FUSE_FS=m\nCONFIG_VIRTIO_FS=m\n# CONFIG_NET_9P is not set\n');
const GENERIC = parseKernelConfig('CONFIG_FUSE_FS=m\nCONFIG_VIRTIO_FS=m\nCONFIG_NET_9P=m\nCONFIG_NET_9P_VIRTIO=m\nCONFIG_9P_FS=m\n');
const BUILTIN_9P = parseKernelConfig('CONFIG_FUSE_FS=y\nCONFIG_VIRTIO_FS=y\nCONFIG_NET_9P=y\nCONFIG_NET_9P_VIRTIO=y\nCONFIG_9P_FS=y\n');
const NINEP_LOADED = ['kernel/net/9p/9pnet.ko', 'kernel/net/9p/9pnet_virtio.ko', 'kernel/fs/netfs/netfs.ko', 'kernel/fs/9p/9p.ko'];

describe('guest features', () => {
  it('counts an option built in, or a module that /init loads', () => {
    expect(guestFeatures(CLOUD, ['kernel/fs/fuse/fuse.ko', 'kernel/fs/fuse/virtiofs.ko'])).toEqual(['virtiofs']);
    expect(guestFeatures(GENERIC, ['kernel/fs/fuse/fuse.ko', 'kernel/fs/fuse/virtiofs.ko', ...NINEP_LOADED])).toEqual(['virtiofs', '9p']);
    expect(guestFeatures(BUILTIN_9P, [])).toEqual(['virtiofs', '9p']);
  });

  it('does not count modules the kernel has but /init does not load, nor a partial set', () => {
    expect(guestFeatures(GENERIC, [])).toEqual([]);
    expect(guestFeatures(GENERIC, ['kernel/net/9p/9pnet.ko', 'kernel/fs/9p/9p.ko'])).toEqual([]);
    // A module loaded for an option that is not =m (here: not set) proves nothing.
    expect(guestFeatures(CLOUD, NINEP_LOADED)).toEqual([]);
  });

  it('names the modules a feature needs, none when built in, and refuses a kernel without it', () => {
    expect(featureModules('9p', GENERIC, '6.1.0-56-amd64')).toEqual(['9pnet', '9pnet_virtio', '9p']);
    expect(featureModules('9p', BUILTIN_9P, 'x')).toEqual([]);
    expect(featureModules('virtiofs', CLOUD, 'x')).toEqual(['fuse', 'virtiofs']);
    expect(() => featureModules('9p', CLOUD, '6.1.0-56-cloud-amd64')).toThrow(GuestBuildError);
    expect(() => featureModules('9p', CLOUD, '6.1.0-56-cloud-amd64')).toThrow(
      /kernel 6\.1\.0-56-cloud-amd64 cannot provide 9p: CONFIG_NET_9P, CONFIG_NET_9P_VIRTIO, CONFIG_9P_FS are not set .*linux-image-amd64/u,
    );
  });
});

describe('rebuildOptions', () => {
  const base = { inputs: { modules: ['virtio_pci'] } } as unknown as GuestManifest;
  it('asks again for what the build was asked for, and only that', () => {
    const manifest = { ...base, request: { kernelPackage: 'linux-image-amd64', extraModules: ['8021q'], features: ['9p'] } } as GuestManifest;
    expect(rebuildOptions(manifest)).toEqual({ kernelPackage: 'linux-image-amd64', extraModules: ['8021q'], features: ['9p'] });
  });
  it('gives the defaults for builds that did not record their request', () => {
    expect(rebuildOptions(base)).toEqual({});
  });
});

describe('manifest features', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-features-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  function write(features: unknown): void {
    const file = (name: string, content: string) => {
      fs.writeFileSync(path.join(dir, name), content);
      return { name, size: content.length, sha256: createHash('sha256').update(content).digest('hex') };
    };
    const manifest = {
      format: 1,
      id: '0123456789abcdef0123456789abcdef',
      builderVersion: 2,
      kernelRelease: '6.1.0-test',
      kernelFormat: 'vmlinux',
      inputs: { kernelPackage: { name: 'k', version: '1', sha256: 'x' }, busyboxSha256: 'b', agentSha256: 'a', modules: [] },
      modules: { load: [], builtin: [] },
      features,
      initMarker: 'vmpod-init: ready',
      files: { kernel: file('vmlinux', 'K'), initramfs: file('initramfs.cpio', 'I'), config: file('config', 'C') },
    };
    fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(manifest));
  }

  it('reads known features and rejects anything else', async () => {
    write(['virtiofs', '9p']);
    expect((await verifyGuestAssets(dir)).features).toEqual(['virtiofs', '9p']);
    write(['9p', 'nfs']);
    await expect(verifyGuestAssets(dir)).rejects.toThrow(GuestAssetsError);
    write('9p');
    await expect(verifyGuestAssets(dir)).rejects.toThrow(/features are malformed/u);
  });
});

describe('extractVmlinux from an XZ payload', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-xz-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  /** A bzImage whose payload is `elf` compressed as the kernel's build does (xz, CRC32, x86 BCJ). */
  function xzBzImage(elf: Buffer, announced = elf.length): string {
    fs.writeFileSync(path.join(dir, 'elf'), elf);
    execFileSync('xz', ['-z', '-k', '-f', '--check=crc32', '--x86', '--lzma2=preset=6', path.join(dir, 'elf')]);
    const payload = fs.readFileSync(path.join(dir, 'elf.xz'));
    const setupSects = 3;
    const image = Buffer.alloc((setupSects + 1) * 512 + 100 + payload.length + 4);
    image[0x1f1] = setupSects;
    image.write('HdrS', 0x202, 'latin1');
    image.writeUInt16LE(0x20f, 0x206);
    image.writeUInt32LE(100, 0x248);
    image.writeUInt32LE(payload.length + 4, 0x24c);
    const start = (setupSects + 1) * 512 + 100;
    payload.copy(image, start);
    image.writeUInt32LE(announced, start + payload.length);
    fs.writeFileSync(path.join(dir, 'bzImage'), image);
    return path.join(dir, 'bzImage');
  }

  const elf = Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]), Buffer.alloc(200_000, 0x90)]);

  it('decompresses it to the ELF the boot header announces', async () => {
    const out = path.join(dir, 'vmlinux');
    expect(await extractVmlinux(xzBzImage(elf), out, dir)).toBe(true);
    expect(fs.readFileSync(out).equals(elf)).toBe(true);
    expect(fs.readdirSync(dir).filter((f) => f.startsWith('vmlinux.'))).toEqual([]);
  });

  it('refuses output whose size differs from the announced one', async () => {
    await expect(extractVmlinux(xzBzImage(elf, elf.length + 1), path.join(dir, 'vmlinux'), dir)).rejects.toThrow(/xz gave 200007 bytes, not the 200008-byte ELF/u);
  });
});
