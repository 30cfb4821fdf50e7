import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AbortError } from '../../src/errors.js';
import {
  GUEST_AGENT_PATH,
  GUEST_ROOTFS_PATH,
  GuestBuildError,
  buildGuestAssets,
  resolveGuestAssets,
  verifyGuestAssets,
  type GuestBuildProgress,
} from '../../src/guest/index.js';
import { moduleName } from '../../src/guest/modules.js';
import { packageRoot } from '../../src/native.js';
import { TEST_AGENT, TEST_CACHE_DIR, testAgentPath, testGuestAssets } from './guest-fixture.js';

/** Lists an archive with busybox's cpio, an independent reader. */
function listCpio(file: string): string[] {
  return execFileSync('/bin/busybox', ['cpio', '-t', '-F', file], { encoding: 'latin1', stdio: ['ignore', 'pipe', 'ignore'] })
    .split('\n')
    .filter(Boolean);
}

function extractFromCpio(file: string, member: string): Buffer {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-cpio-'));
  try {
    execFileSync('/bin/busybox', ['cpio', '-i', '-d', '-F', file, member], { cwd: dir, stdio: 'ignore' });
    return fs.readFileSync(path.join(dir, member));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const temps: string[] = [];
afterEach(() => {
  for (const t of temps.splice(0)) fs.rmSync(t, { recursive: true, force: true });
});

const realAgent = path.join(packageRoot, 'build', 'Release', 'vmpod-agent');

describe('buildGuestAssets (real Debian kernel, busybox-static)', () => {
  it('builds a bootable set: PVH vmlinux, initramfs with busybox, modules, agent, /init and the builtin rootfs', async () => {
    const { assets } = await testGuestAssets();
    const manifest = assets.manifest;
    expect(manifest?.kernelFormat).toBe('vmlinux');
    expect(manifest?.kernelRelease).toMatch(/^\d+\.\d+\.\d+-\d+-cloud-amd64$/u);
    expect(manifest?.inputs.kernelPackage.name).toBe(`linux-image-${manifest?.kernelRelease}`);
    // The uncompressed kernel is an ELF (PVH entry), not the bzImage.
    const head = Buffer.alloc(4);
    const fd = fs.openSync(assets.kernel, 'r');
    fs.readSync(fd, head, 0, 4, 0);
    fs.closeSync(fd);
    expect(head.toString('latin1')).toBe('\x7fELF');

    const loaded = (manifest?.modules.load ?? []).map(moduleName);
    for (const m of ['virtio_pci', 'virtio_mmio', 'virtio_console', 'virtio_net', 'virtio_blk', 'fuse', 'virtiofs', 'overlay', 'vsock', 'vmw_vsock_virtio_transport', 'tun']) {
      expect(loaded).toContain(m);
    }
    expect(loaded.indexOf('virtio_pci')).toBeLessThan(loaded.indexOf('virtio_console'));
    expect(manifest?.modules.builtin).toContain('af_packet');

    const files = listCpio(assets.initramfs);
    const release = manifest?.kernelRelease ?? '';
    for (const f of [
      'init',
      'bin/busybox',
      'bin/sh',
      'sbin/insmod',
      'dev/console',
      GUEST_AGENT_PATH.slice(1),
      `lib/modules/${release}/modules.dep`,
      `lib/modules/${release}/kernel/drivers/virtio/virtio_pci.ko`,
      `${GUEST_ROOTFS_PATH.slice(1)}/bin/busybox`,
      `${GUEST_ROOTFS_PATH.slice(1)}/bin/sh`,
      `${GUEST_ROOTFS_PATH.slice(1)}/etc/passwd`,
      `${GUEST_ROOTFS_PATH.slice(1)}/etc/group`,
      `${GUEST_ROOTFS_PATH.slice(1)}/etc/hosts`,
      `${GUEST_ROOTFS_PATH.slice(1)}/proc`,
      `${GUEST_ROOTFS_PATH.slice(1)}/tmp`,
    ]) {
      expect(files).toContain(f);
    }
    expect(extractFromCpio(assets.initramfs, GUEST_AGENT_PATH.slice(1)).toString()).toBe(TEST_AGENT);
    // The guest's modules.dep (depmod on the subset) covers exactly the modules carried.
    const dep = extractFromCpio(assets.initramfs, `lib/modules/${release}/modules.dep`).toString();
    expect(dep.split('\n').filter(Boolean).map((l) => l.slice(0, l.indexOf(':'))).sort()).toEqual([...(manifest?.modules.load ?? [])].sort());
    await expect(verifyGuestAssets(assets.dir ?? '')).resolves.toEqual(manifest);
  });

  it('skips the rebuild when nothing changed, and the library finds the assets', async () => {
    const { assets } = await testGuestAssets();
    const steps: GuestBuildProgress[] = [];
    const again = await buildGuestAssets({ cacheDir: TEST_CACHE_DIR, agent: testAgentPath(), onProgress: (p) => steps.push(p) });
    expect(again.built).toBe(false);
    expect(again.assets.id).toBe(assets.id);
    expect(steps.map((s) => s.step)).toEqual(['resolve', 'done']);
    expect(steps.at(-1)?.message).toMatch(/up to date/);
    const resolved = await resolveGuestAssets({ cacheDir: TEST_CACHE_DIR });
    expect(resolved.kernel).toBe(assets.kernel);
    expect(fs.readlinkSync(path.join(TEST_CACHE_DIR, 'current'))).toBe(path.join('assets', assets.id ?? ''));
  });

  it('gives another id when an input changes (here the agent), in a cache of its own', async () => {
    const { assets } = await testGuestAssets();
    const variantCache = `${TEST_CACHE_DIR}-variant`;
    const agent = testAgentPath('test-agent-variant', `${TEST_AGENT}# variant\n`);
    const debs = path.join(TEST_CACHE_DIR, 'debs');
    const deb = path.join(debs, fs.readdirSync(debs).find((f) => f.endsWith('.deb')) ?? '');
    const variant = await buildGuestAssets({ cacheDir: variantCache, agent, kernelDeb: deb });
    expect(variant.assets.id).not.toBe(assets.id);
    expect(variant.assets.manifest?.inputs.agentSha256).not.toBe(assets.manifest?.inputs.agentSha256);
    expect(variant.assets.manifest?.kernelRelease).toBe(assets.manifest?.kernelRelease);
  });

  it('aborts through its AbortSignal and leaves no partial output', async () => {
    await testGuestAssets();
    const cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-guest-'));
    temps.push(cacheDir);
    const debs = path.join(TEST_CACHE_DIR, 'debs');
    const deb = path.join(debs, fs.readdirSync(debs).find((f) => f.endsWith('.deb')) ?? '');
    const controller = new AbortController();
    const error = await buildGuestAssets({
      cacheDir,
      agent: testAgentPath(),
      kernelDeb: deb,
      signal: controller.signal,
      onProgress: (p) => {
        if (p.step === 'kernel') controller.abort();
      },
    }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AbortError);
    expect(fs.readdirSync(path.join(cacheDir, 'tmp'))).toEqual([]);
    expect(fs.existsSync(path.join(cacheDir, 'current'))).toBe(false);
    expect(fs.readdirSync(path.join(cacheDir, 'assets'))).toEqual([]);
  });

  it('fails with a clear error when the agent is missing', async () => {
    const cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-guest-'));
    temps.push(cacheDir);
    const error = await buildGuestAssets({ cacheDir, agent: path.join(cacheDir, 'vmpod-agent') }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(GuestBuildError);
    expect((error as GuestBuildError).step).toBe('resolve');
    expect((error as Error).message).toMatch(/guest agent not found at .*npm run build:native/);
    expect(fs.readdirSync(cacheDir)).toEqual([]);
  });

  it.skipIf(!fs.existsSync(realAgent))('builds with the real agent from build/Release/vmpod-agent (needs the agent build)', async () => {
    const result = await buildGuestAssets({ cacheDir: `${TEST_CACHE_DIR}-agent`, agent: realAgent });
    expect(extractFromCpio(result.assets.initramfs, GUEST_AGENT_PATH.slice(1)).equals(fs.readFileSync(realAgent))).toBe(true);
  });
});
