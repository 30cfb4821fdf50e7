/**
 * 9p directory volumes in a real sandbox. Its guest is built from Debian's generic kernel
 * (`linux-image-amd64`, 9p as modules) with `features: ['9p']` into a cache of its own, kept
 * across runs (the build is skipped when no input changed). Read-write and read-only shares,
 * files written on each side seen on the other, next to a virtio-fs volume and an ext4 block
 * volume (ext4 is a module in that kernel); hot plug and detach; a sandbox rebuilding that
 * guest for a new agent keeps its kernel and 9p; and the cloud kernel, which has no 9p,
 * refused before anything is made.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FeatureUnavailableError } from '../../../src/devices/errors.js';
import { InvalidArgumentError, NotFoundError } from '../../../src/errors.js';
import { buildGuestAssets, GuestBuildError, resolveGuestAssets, type GuestBuildResult } from '../../../src/guest/index.js';
import { packageRoot } from '../../../src/native.js';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { Volume } from '../../../src/volume/volume.js';
import { VolumeReadOnlyError } from '../../../src/volume/errors.js';
import { expectNothingLeft, forceCleanup, makeStateDir, processesMentioning, skipReason as vmSkip, runScript } from '../sandbox/fixture.js';

const exec = promisify(execFile);

/** Persistent cache of the generic-kernel guest (not a temp dir: keeping it is the point). */
const NINEP_CACHE_DIR = '/var/cache/vmpod/test-guest-9p';

const skipReason =
  vmSkip ??
  ((await exec('apt-cache', ['show', '--no-all-versions', 'linux-image-amd64']).then(() => true, () => false))
    ? undefined
    : 'apt does not know linux-image-amd64 (run apt-get update)');

/** The generic-kernel guest with the real agent, or `agent` (built once each, then reused). */
function ninepGuest(agent?: string): Promise<GuestBuildResult> {
  return buildGuestAssets({
    cacheDir: NINEP_CACHE_DIR,
    kernelPackage: 'linux-image-amd64',
    features: ['9p'],
    updateAptLists: true,
    ...(agent === undefined ? {} : { agent }),
  });
}

/** This package's agent with bytes appended: another agent, as after an upgrade of vmpod. */
async function otherAgent(): Promise<string> {
  const file = path.join(NINEP_CACHE_DIR, 'agent-variant');
  const bytes = Buffer.concat([await fs.readFile(path.join(packageRoot, 'build', 'Release', 'vmpod-agent')), Buffer.from('\nvmpod test variant\n')]);
  if (!(await fs.readFile(file).catch(() => Buffer.alloc(0))).equals(bytes)) await fs.writeFile(file, bytes, { mode: 0o755 });
  return file;
}

const run = runScript;

/** The mountinfo line of `dest` in a container's view: `... DEST MOUNT_OPTS ... - FSTYPE SOURCE SUPER_OPTS`. */
function mountinfo(text: string, dest: string): { options: string; fstype: string; source: string; superOptions: string } | undefined {
  for (const line of text.split('\n')) {
    const [left, right] = line.split(' - ');
    const fields = left?.split(' ') ?? [];
    if (fields[4] !== dest || right === undefined) continue;
    const [fstype = '', source = '', superOptions = ''] = right.split(' ');
    return { options: fields[5] ?? '', fstype, source, superOptions };
  }
  return undefined;
}

describe.skipIf(skipReason)(`9p volumes on a guest kernel that has 9p${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  let work: string;
  let rw: string;
  let ro: string;
  let shared: string;
  /** A 9p volume only the detach test uses (the others use data and conf, whatever ran before). */
  let spare: string;
  let sandbox: Sandbox;
  let realBuild: string | undefined;
  let oldBuild: string | undefined;
  const progress: string[] = [];

  beforeAll(async () => {
    const { assets } = await ninepGuest();
    realBuild = assets.id;
    expect(assets.manifest).toMatchObject({ kernelFormat: 'vmlinux', features: expect.arrayContaining(['9p', 'virtiofs']) });
    expect(assets.manifest?.kernelRelease).toMatch(/^\d+\.\d+\.\d+-\d+-amd64$/u);
    expect(assets.manifest?.modules.load).toEqual(expect.arrayContaining(['kernel/net/9p/9pnet.ko', 'kernel/net/9p/9pnet_virtio.ko', 'kernel/fs/9p/9p.ko']));

    stateDir = await makeStateDir();
    work = await fs.mkdtemp(path.join(stateDir, 'work-'));
    rw = path.join(work, 'rw');
    ro = path.join(work, 'ro');
    shared = path.join(work, 'shared');
    spare = path.join(work, 'spare');
    for (const dir of [rw, ro, shared, spare]) await fs.mkdir(dir);
    await fs.writeFile(path.join(spare, 'kept.txt'), 'kept on the host\n');
    await fs.writeFile(path.join(ro, 'config.txt'), 'read-only from the host\n');
    const diskContent = path.join(work, 'disk-content');
    await fs.mkdir(diskContent);
    await fs.writeFile(path.join(diskContent, 'boot.txt'), 'on ext4\n');
    await exec('mkfs.ext4', ['-q', '-F', '-d', diskContent, path.join(work, 'disk.raw'), '8M']);
    sandbox = await Sandbox.create({
      stateDir,
      memoryMiB: 256,
      guest: { cacheDir: NINEP_CACHE_DIR },
      volumes: [
        Volume.directory('data', rw, { transport: '9p' }),
        Volume.directory('conf', ro, { transport: '9p', readOnly: true }),
        Volume.directory('vfs', shared),
        Volume.block('disk', path.join(work, 'disk.raw'), { readOnly: true }),
        Volume.directory('spare', spare, { transport: '9p' }),
      ],
    });
    // The cache's current build carries another agent: start() must build again, alike.
    oldBuild = (await ninepGuest(await otherAgent())).assets.id;
    sandbox.on('progress', (message) => progress.push(message));
    await sandbox.start();
  });

  afterAll(async () => {
    try {
      await sandbox?.delete({ force: true });
      if (stateDir) await expectNothingLeft(stateDir);
    } finally {
      if (stateDir) await forceCleanup(stateDir);
    }
  });

  it('rebuilt its guest for this agent with the same kernel and 9p (the request of the build it replaced)', async () => {
    expect(oldBuild).not.toBe(realBuild);
    expect(progress.some((m) => m.includes('building the guest assets'))).toBe(true);
    const now = await resolveGuestAssets({ cacheDir: NINEP_CACHE_DIR });
    expect(now.id).toBe(realBuild);
    expect(now.manifest).toMatchObject({ kernelRelease: expect.stringMatching(/-amd64$/u), request: { kernelPackage: 'linux-image-amd64', features: ['9p'] } });
    expect(now.manifest?.kernelRelease).not.toMatch(/cloud/u);
  });

  it('mounts each 9p volume in the guest by its tag, read-write and read-only, and binds it into a container', async () => {
    const byName = new Map((await sandbox.volumes()).map((v) => [v.spec.name, v]));
    expect(byName.get('data')?.guestPath).toBe('/run/vmpod/volumes/data');
    expect(byName.get('conf')?.guestPath).toBe('/run/vmpod/volumes/conf');
    const r = await run(
      sandbox,
      { volumes: [{ volume: 'data', destination: '/data' }, { volume: 'conf', destination: '/conf', readOnly: true }] },
      'cat /proc/self/mountinfo',
    );
    expect(r.code).toBe(0);
    // The container's binds show the guest mounts under them: 9p, by tag, over virtio.
    const data = mountinfo(r.out, '/data');
    const conf = mountinfo(r.out, '/conf');
    expect(data).toMatchObject({ fstype: '9p', source: 'vol-data' });
    expect(data?.options).toMatch(/^rw\b/u);
    expect(data?.superOptions).toMatch(/^rw\b.*trans=virtio/u);
    expect(conf).toMatchObject({ fstype: '9p', source: 'vol-conf' });
    expect(conf?.options).toMatch(/^ro\b/u);
    // Read-only in the guest itself (the agent's mount), not only in the container's bind.
    expect(conf?.superOptions).toMatch(/^ro\b/u);
  });

  it('sees on each side what the other wrote, read-write; read-only refuses writes in the guest', async () => {
    await fs.writeFile(path.join(rw, 'from-host.txt'), 'written on the host\n');
    const r = await run(
      sandbox,
      { volumes: [{ volume: 'data', destination: '/data' }, { volume: 'conf', destination: '/conf', readOnly: true }] },
      'cat /data/from-host.txt /conf/config.txt && mkdir /data/dir && echo written in the guest > /data/dir/from-guest.txt && rm /data/from-host.txt && if echo x > /conf/new.txt; then echo WROTE; fi',
    );
    expect(r.out).toBe('written on the host\nread-only from the host\n');
    expect(r.err).toMatch(/Read-only file system/u);
    expect(r.code).toBe(0);
    expect(await fs.readFile(path.join(rw, 'dir', 'from-guest.txt'), 'utf8')).toBe('written in the guest\n');
    await expect(fs.stat(path.join(rw, 'from-host.txt'))).rejects.toThrow(/ENOENT/u);
    await expect(fs.stat(path.join(ro, 'new.txt'))).rejects.toThrow(/ENOENT/u);

    // A later host write shows at once in a second container (no guest cache in the way).
    await fs.writeFile(path.join(rw, 'dir', 'from-guest.txt'), 'changed on the host\n');
    const again = await run(sandbox, { volumes: [{ volume: 'data', destination: '/d', readOnly: true }] }, 'cat /d/dir/from-guest.txt');
    expect(again.out).toBe('changed on the host\n');
    // A read-only volume cannot be mounted read-write in a container.
    await expect(sandbox.createContainer({ volumes: [{ volume: 'conf', destination: '/conf' }] })).rejects.toThrow(VolumeReadOnlyError);
  });

  it('works next to a virtio-fs volume and an ext4 block volume in the same guest', async () => {
    await fs.writeFile(path.join(shared, 'v.txt'), 'through virtio-fs\n');
    const r = await run(
      sandbox,
      { volumes: [{ volume: 'vfs', destination: '/vfs' }, { volume: 'disk', destination: '/disk', readOnly: true }, { volume: 'data', destination: '/data' }] },
      'cat /vfs/v.txt /disk/boot.txt && grep -E " /(vfs|disk|data) " /proc/mounts | cut -d" " -f2,3 | sort',
    );
    expect(r.code).toBe(0);
    expect(r.out).toBe('through virtio-fs\non ext4\n/data 9p\n/disk ext4\n/vfs virtiofs\n');
  });

  it('refuses to hot plug a 9p volume, changing nothing', async () => {
    const before = await sandbox.volumes();
    const error = await sandbox.addVolume(Volume.directory('late', rw, { transport: '9p' })).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect((error as Error).message).toMatch(/9p devices cannot be hot plugged: give the volume in the sandbox config/u);
    expect(await sandbox.volumes()).toEqual(before);
  });

  it('detaching a 9p volume unmounts it in the guest; containers can no longer ask for it', async () => {
    const mounted = await run(sandbox, { volumes: [{ volume: 'spare', destination: '/spare' }] }, 'cat /spare/kept.txt');
    expect(mounted).toMatchObject({ code: 0, out: 'kept on the host\n' });
    await sandbox.removeVolume('spare');
    expect((await sandbox.volumes()).map((v) => v.spec.name)).toEqual(['data', 'conf', 'vfs', 'disk']);
    await expect(sandbox.createContainer({ volumes: [{ volume: 'spare', destination: '/spare' }] })).rejects.toThrow(NotFoundError);
    // The host directory is untouched.
    expect(await fs.readdir(spare)).toEqual(['kept.txt']);
    expect(await fs.readFile(path.join(spare, 'kept.txt'), 'utf8')).toBe('kept on the host\n');
  });
});

describe.skipIf(vmSkip)(`9p volumes on the cloud kernel${vmSkip ? ` (skipped: ${vmSkip})` : ''}`, () => {
  it('a guest build asked for 9p from the cloud kernel fails naming the missing options, leaving the cache as it was', async () => {
    const current = await fs.readlink(path.join(NINEP_CACHE_DIR, 'current')).catch(() => '');
    const error = await buildGuestAssets({ cacheDir: NINEP_CACHE_DIR, kernelPackage: 'linux-image-cloud-amd64', features: ['9p'], updateAptLists: true }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(GuestBuildError);
    expect(error).toMatchObject({ step: 'modules' });
    expect((error as Error).message).toMatch(/kernel \S+-cloud-amd64 cannot provide 9p: CONFIG_NET_9P, CONFIG_NET_9P_VIRTIO, CONFIG_9P_FS are not set/u);
    expect(await fs.readlink(path.join(NINEP_CACHE_DIR, 'current')).catch(() => '')).toBe(current);
    expect(await fs.readdir(path.join(NINEP_CACHE_DIR, 'tmp'))).toEqual([]);
  });

  it('fails start() with FeatureUnavailableError naming the kernel, before anything is made', async () => {
    const stateDir = await makeStateDir();
    try {
      const dir = await fs.mkdtemp(path.join(stateDir, 'share-'));
      // The default guest cache: Debian's cloud kernel.
      const sandbox = await Sandbox.create({ stateDir, volumes: [Volume.directory('v', dir, { transport: '9p' })] });
      const error = await sandbox.start().catch((e: unknown) => e);
      expect(error).toBeInstanceOf(FeatureUnavailableError);
      expect((error as Error).message).toMatch(/the guest kernel \S+-cloud-amd64 has no 9p filesystem .*use transport "virtiofs", or build the guest with 9p/u);
      expect(await processesMentioning(stateDir)).toEqual([]);
      await sandbox.delete({ force: true });
      await expectNothingLeft(stateDir);
    } finally {
      await forceCleanup(stateDir);
    }
  });
});
