/**
 * Volumes in a real sandbox: host directories through virtio-fs (read-write and read-only),
 * a tmpfs shared by two containers, block volumes (raw and qcow2 images holding ext4) hot
 * plugged, used and unplugged, and a container rootfs as an ext4 image on a hot-plugged disk
 * next to the same rootfs through virtio-fs (their start times are printed, not asserted).
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { Volume } from '../../../src/volume/volume.js';
import { VolumeReadOnlyError } from '../../../src/volume/errors.js';
import { mountPoints } from '../../../src/state/remove.js';
import { busyboxRootfs, expectNothingLeft, forceCleanup, makeStateDir, skipReason as vmSkip, runScript } from '../sandbox/fixture.js';

const exec = promisify(execFile);
const skipReason = vmSkip ?? ((await fs.stat('/usr/bin/qemu-img').catch(() => undefined)) ? undefined : 'needs qemu-img (qemu-utils)');

const run = runScript;

describe.skipIf(skipReason)(`volumes in a sandbox${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  let work: string;
  let rw: string;
  let ro: string;
  let sandbox: Sandbox;

  beforeAll(async () => {
    stateDir = await makeStateDir();
    work = await fs.mkdtemp(path.join(stateDir, 'work-'));
    rw = path.join(work, 'rw');
    ro = path.join(work, 'ro');
    await fs.mkdir(rw);
    await fs.mkdir(ro);
    await fs.writeFile(path.join(ro, 'config.txt'), 'from the host\n');
    const coldContent = path.join(work, 'cold-content');
    await fs.mkdir(coldContent);
    await fs.writeFile(path.join(coldContent, 'boot.txt'), 'there at boot\n');
    await exec('mkfs.ext4', ['-q', '-F', '-d', coldContent, path.join(work, 'cold.raw'), '8M']);
    sandbox = await Sandbox.create({
      stateDir,
      memoryMiB: 256,
      volumes: [
        Volume.directory('data', rw),
        Volume.directory('conf', ro, { readOnly: true }),
        Volume.tmpfs('scratch', { sizeMiB: 16 }),
        Volume.block('cold', path.join(work, 'cold.raw'), { readOnly: true }),
      ],
    });
    await sandbox.start();
  });

  afterAll(async () => {
    try {
      await sandbox?.delete({ force: true });
      await expectNothingLeft(stateDir);
    } finally {
      await forceCleanup(stateDir);
    }
  });

  it('shares host directories read-write and read-only through virtio-fs', async () => {
    const r = await run(
      sandbox,
      { volumes: [{ volume: 'data', destination: '/data' }, { volume: 'conf', destination: '/conf', readOnly: true }] },
      'cat /conf/config.txt && echo written > /data/out.txt && if echo x > /conf/new.txt; then echo WROTE; fi',
    );
    expect(r.out).toBe('from the host\n');
    expect(r.err).toMatch(/Read-only file system/u);
    expect(r.code).toBe(0);
    expect(await fs.readFile(path.join(rw, 'out.txt'), 'utf8')).toBe('written\n');
    await expect(fs.stat(path.join(ro, 'new.txt'))).rejects.toMatchObject({ code: 'ENOENT' });
    // A read-only volume cannot be mounted read-write in a container.
    await expect(sandbox.createContainer({ volumes: [{ volume: 'conf', destination: '/conf' }] })).rejects.toThrow(VolumeReadOnlyError);
  });

  it('adds a directory volume to the running sandbox (a bind that propagates into virtiofsd) and removes it', async () => {
    const late = path.join(work, 'late');
    await fs.mkdir(late);
    await fs.writeFile(path.join(late, 'hello'), 'added later\n');
    const volume = Volume.directory('late', late);
    expect(await sandbox.addVolume(volume)).toMatchObject({ guestPath: expect.stringMatching(/^\/run\/vmpod\/shared\/volumes\/late\.[0-9a-f]{8}$/u), hotplugged: true });
    const r = await run(sandbox, { volumes: [volume.at('/late')] }, 'cat /late/hello');
    expect(r.out).toBe('added later\n');
    await sandbox.removeVolume(volume.name);
    expect((await mountPoints()).filter((m) => m.includes('/volumes/late'))).toEqual([]);
  });

  it('mounts a block volume of the config (cold plugged, found by its serial) read-only', async () => {
    const r = await run(sandbox, { volumes: [{ volume: 'cold', destination: '/cold', readOnly: true }] }, 'cat /cold/boot.txt; grep " /cold " /proc/mounts');
    expect(r.out).toMatch(/^there at boot\n\/dev\/vd[a-z] \/cold ext4 ro/u);
  });

  it('shares a tmpfs volume between two containers', async () => {
    const a = await run(sandbox, { volumes: [{ volume: 'scratch', destination: '/s' }] }, 'echo hello > /s/f && grep " /s " /proc/mounts');
    expect(a.code).toBe(0);
    expect(a.out).toMatch(/^tmpfs \/s tmpfs rw.*size=16384k/mu);
    const b = await run(sandbox, { volumes: [{ volume: 'scratch', destination: '/t', readOnly: true }] }, 'cat /t/f');
    expect(b.out).toBe('hello\n');
  });

  it('hot plugs raw and qcow2 block volumes, mounts them in containers, and unplugs them', async () => {
    const content = path.join(work, 'disk-content');
    await fs.mkdir(content);
    await fs.writeFile(path.join(content, 'hello.txt'), 'on the disk\n');
    const raw = path.join(work, 'disk.raw');
    await exec('mkfs.ext4', ['-q', '-F', '-d', content, raw, '16M']);
    const qcow2 = path.join(work, 'disk.qcow2');
    await exec('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2]);

    const disk = Volume.block('disk', raw);
    const info = await sandbox.addVolume(disk);
    expect(info).toEqual({ spec: { kind: 'block', name: 'disk', source: raw, format: 'raw' }, hotplugged: true, guestPath: '/run/vmpod/volumes/disk' });
    const r = await run(sandbox, { volumes: [disk.at('/mnt')] }, 'cat /mnt/hello.txt && echo from the guest > /mnt/new.txt && grep " /mnt " /proc/mounts');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^on the disk\n\/dev\/vd[a-z] \/mnt ext4 rw/u);
    await sandbox.removeVolume(disk.name);
    // The guest's write is in the image.
    const { stdout } = await exec('debugfs', ['-R', 'cat /new.txt', raw]);
    expect(stdout).toBe('from the guest\n');

    // qcow2 read-write: the guest's write lands in the image (read back through a read-only attach).
    const qw = Volume.block('qdisk', qcow2, { format: 'qcow2' });
    await sandbox.addVolume(qw);
    const wq = await run(sandbox, { volumes: [qw.at('/q')] }, 'echo into qcow2 > /q/q.txt && grep " /q " /proc/mounts');
    expect(wq.out).toMatch(/^\/dev\/vd[a-z] \/q ext4 rw/u);
    await sandbox.removeVolume(qw.name);
    const q = Volume.block('qdisk', qcow2, { format: 'qcow2', readOnly: true });
    await sandbox.addVolume(q);
    const rq = await run(sandbox, { volumes: [q.at('/q', { readOnly: true })] }, 'cat /q/hello.txt /q/q.txt; grep " /q " /proc/mounts');
    expect(rq.out).toMatch(/^on the disk\ninto qcow2\n\/dev\/vd[a-z] \/q ext4 ro/u);
    expect((await sandbox.volumes()).map((v) => v.spec.name)).toEqual(['data', 'conf', 'scratch', 'cold', 'qdisk']);
    await sandbox.removeVolume(q.name);
    expect((await sandbox.volumes()).map((v) => v.spec.name)).toEqual(['data', 'conf', 'scratch', 'cold']);
  });

  it('refuses to attach a block image that lies on a read-only mount read-write', async () => {
    const roMount = path.join(work, 'ro-mount');
    await fs.mkdir(roMount);
    await exec('mkfs.ext4', ['-q', '-F', path.join(ro, 'image.raw'), '8M']);
    await exec('mount', ['--bind', '-o', 'ro', ro, roMount]);
    try {
      await expect(sandbox.addVolume(Volume.block('rodisk', path.join(roMount, 'image.raw')))).rejects.toThrow(VolumeReadOnlyError);
      expect((await sandbox.volumes()).map((v) => v.spec.name)).toEqual(['data', 'conf', 'scratch', 'cold']);
      // Read-only, it attaches.
      const disk = Volume.block('rodisk', path.join(roMount, 'image.raw'), { readOnly: true });
      await sandbox.addVolume(disk);
      await sandbox.removeVolume(disk.name);
    } finally {
      await exec('umount', [roMount]);
    }
  });

  it('runs a container whose rootfs is an ext4 image on a hot-plugged disk, and one through virtio-fs', async () => {
    const rootfsDir = path.join(work, 'image');
    const rootfs = await busyboxRootfs(rootfsDir);
    await fs.writeFile(path.join(rootfs, 'etc/marker'), 'the image\n');
    const times: Record<string, number> = {};
    for (const transport of ['block', 'virtiofs', 'block', 'virtiofs'] as const) {
      const t0 = performance.now();
      const r = await run(sandbox, { rootfs, rootfsTransport: transport }, 'cat /etc/marker; grep " / " /proc/mounts | head -n1');
      times[transport] = performance.now() - t0;
      expect(r.code).toBe(0);
      expect(r.out).toMatch(transport === 'block' ? /^the image\n\/dev\/vd[a-z] \/ ext4/u : /^the image\nnone \/ virtiofs|^the image\n\S+ \/ (virtiofs|overlay)/u);
    }
    console.log(`container start to exit, rootfs through: block ${times['block']!.toFixed(0)} ms, virtio-fs ${times['virtiofs']!.toFixed(0)} ms`);
    // The image and its disk are gone with the container.
    expect(await fs.readdir(path.join(sandbox.dir, 'disks'))).toEqual([]);
    expect((await sandbox.volumes()).map((v) => v.spec.name)).toEqual(['data', 'conf', 'scratch', 'cold']);
  });
});
