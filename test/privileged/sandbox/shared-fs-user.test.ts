/**
 * A sandbox whose shared filesystem is served by an unprivileged virtiofsd (`sharedFsUser`), with
 * QEMU unprivileged too (`runAs`): virtiofsd runs as the range's base uid in a user namespace
 * mapping `0 BASE 65536`, every mount it exports is idmapped with that map, and the guest sees
 * (and writes) files with their real host owners; a read-only volume stays read-only all the way
 * down; an overlayfs source is refused with a typed error and nothing left; stop and delete leave
 * nothing (no process, mount, user namespace or folder).
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../../src/errors.js';
import { IdmapUnsupportedError } from '../../../src/host/tree.js';
import { mount, unmount } from '../../../src/devices/mount.js';
import { mountPoints } from '../../../src/state/remove.js';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { Volume } from '../../../src/volume/volume.js';
import { busyboxRootfs, collect, expectNothingLeft, forceCleanup, makeStateDir, runScript, skipReason } from './fixture.js';

const exec = promisify(execFile);
const NOBODY = { uid: 65534, gid: 65534 };
/** The daemon's range: host ids 200000..265535 (nothing else here uses them: checked first). */
const BASE = 200000;
const COUNT = 65536;

/** Uid, Gid and Groups lines of /proc/PID/status (real, effective, saved, filesystem). */
async function ids(pid: number): Promise<{ uid: number[]; gid: number[]; groups: string }> {
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): string => status.match(new RegExp(`^${name}:[ \\t]*(.*)$`, 'mu'))?.[1]?.trim() ?? '';
  return { uid: field('Uid').split(/\s+/u).map(Number), gid: field('Gid').split(/\s+/u).map(Number), groups: field('Groups') };
}

/** Pids of the processes whose uid (any of the four) is in the range, or whose user namespace maps 0 to BASE. */
async function rangeProcesses(): Promise<number[]> {
  const pids: number[] = [];
  for (const name of await fs.readdir('/proc')) {
    if (!/^\d+$/u.test(name)) continue;
    const status = await fs.readFile(`/proc/${name}/status`, 'utf8').catch(() => '');
    const uids = (status.match(/^Uid:\s+(.*)$/mu)?.[1] ?? '').split(/\s+/u).map(Number);
    const map = (await fs.readFile(`/proc/${name}/uid_map`, 'utf8').catch(() => '')).trim().split(/\s+/u).map(Number);
    if (uids.some((u) => u >= BASE && u < BASE + COUNT) || (map[0] === 0 && map[1] === BASE)) pids.push(Number(name));
  }
  return pids;
}

/** Waits (up to 5 s) for the range's processes to be gone: a process that was told to exit takes a moment. */
async function rangeProcessesGone(): Promise<number[]> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const left = await rangeProcesses();
    if (left.length === 0 || Date.now() > deadline) return left;
    await new Promise((r) => setTimeout(r, 100));
  }
}

function modeOf(stat: { mode: number }): string {
  return (stat.mode & 0o7777).toString(8).padStart(4, '0');
}

describe.skipIf(skipReason)(`a sandbox whose virtiofsd runs without root (sharedFsUser)${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  let work: string;
  /** Host mounts this file made in `work` (unmounted in afterAll, newest first). */
  const hostMounts: string[] = [];

  beforeAll(async () => {
    expect(await rangeProcesses()).toEqual([]);
    stateDir = await makeStateDir();
    // The state root is the test's: the daemon must pass it (vmpod makes sandboxes/ 0711, the sandbox folder 0710).
    await fs.chmod(stateDir, 0o711);
    // Sources in a root-only folder: the daemon never reaches them by path, only through the share.
    work = await fs.mkdtemp(path.join(os.tmpdir(), 'vt-shared-fs-user-'));
  });

  afterAll(async () => {
    try {
      for (const point of hostMounts.reverse()) await unmount(point, { detach: true }).catch(() => undefined);
      const left = (await mountPoints()).filter((m) => m.startsWith(`${work}/`));
      for (const point of left.reverse()) await exec('umount', ['-l', point]).catch(() => undefined);
      await fs.rm(work, { recursive: true, force: true });
    } finally {
      await forceCleanup(stateDir);
    }
  });

  it('refuses a range that is root, overflows, overlaps runAs, or has no share to serve', async () => {
    const create = (extra: object): Promise<Sandbox> => Sandbox.create({ stateDir, ...extra } as never);
    await expect(create({ sharedFsUser: { uid: 0, gid: BASE } })).rejects.toMatchObject({ constructor: InvalidArgumentError, field: 'sharedFsUser.uid' });
    await expect(create({ sharedFsUser: { uid: BASE, gid: 0 } })).rejects.toMatchObject({ field: 'sharedFsUser.gid' });
    await expect(create({ sharedFsUser: { uid: 2 ** 32 - 10, gid: BASE } })).rejects.toMatchObject({ field: 'sharedFsUser.count' });
    await expect(create({ sharedFsUser: { uid: BASE, gid: BASE, count: 0 } })).rejects.toMatchObject({ field: 'sharedFsUser.count' });
    await expect(create({ sharedFsUser: { uid: BASE, gid: BASE, shift: 1 } })).rejects.toMatchObject({ field: 'sharedFsUser.shift' });
    await expect(create({ sharedFsUser: { uid: BASE, gid: BASE }, sharedFs: false })).rejects.toMatchObject({ field: 'sharedFsUser' });
    await expect(create({ sharedFsUser: { uid: 60000, gid: 60000 }, runAs: NOBODY })).rejects.toMatchObject({ field: 'sharedFsUser', message: expect.stringMatching(/runAs/u) });
    expect(await fs.readdir(path.join(stateDir, 'sandboxes')).catch(() => [])).toEqual([]);
  });

  it('names the state folder the daemon cannot pass, before anything is mounted or started', async () => {
    const closed = await makeStateDir(); // 0700: the daemon cannot pass it
    try {
      const sandbox = await Sandbox.create({ stateDir: closed, sharedFsUser: { uid: BASE, gid: BASE } });
      const error = await sandbox.start().catch((e: unknown) => e);
      expect(error).toBeInstanceOf(InvalidArgumentError);
      expect(error).toMatchObject({ field: 'stateDir', message: expect.stringContaining(`${closed} (mode 0700, owner 0:0) does not let uid ${BASE} gid ${BASE} pass`) });
      expect(await rangeProcesses()).toEqual([]);
      expect((await mountPoints()).filter((m) => m.startsWith(closed))).toEqual([]);
      await sandbox.delete();
      await expectNothingLeft(closed);
    } finally {
      await forceCleanup(closed);
    }
  });

  it('serves the share with real owners: root-owned bundle, read-write bind, read-only volume with a submount; an overlay is refused; nothing is left', async () => {
    const sandbox = await Sandbox.create({ stateDir, runAs: NOBODY, sharedFsUser: { uid: BASE, gid: BASE } });
    expect(sandbox.config.sharedFsUser).toEqual({ uid: BASE, gid: BASE, count: COUNT });
    try {
      await sandbox.start();

      // QEMU is nobody; virtiofsd is the range's base ids, no groups, root only in its own user namespace mapped 0 BASE COUNT.
      expect(await ids(sandbox.pid!)).toMatchObject({ uid: [65534, 65534, 65534, 65534], gid: [65534, 65534, 65534, 65534] });
      const record = await sandbox.record();
      const daemon = (record.resources['sharedFs'] as { virtiofsd: { pid: number; socket: string } }).virtiofsd;
      // The map is recorded with the tree: every later bind, from any process, idmaps with it.
      expect(record.resources['sharedFs']).toMatchObject({ tree: { made: true, idmap: { uid: BASE, gid: BASE, count: COUNT } } });
      expect(await ids(daemon.pid)).toEqual({ uid: [BASE, BASE, BASE, BASE], gid: [BASE, BASE, BASE, BASE], groups: '' });
      expect((await fs.readFile(`/proc/${daemon.pid}/uid_map`, 'utf8')).trim().split(/\s+/u).map(Number)).toEqual([0, BASE, COUNT]);
      expect((await fs.readFile(`/proc/${daemon.pid}/gid_map`, 'utf8')).trim().split(/\s+/u).map(Number)).toEqual([0, BASE, COUNT]);
      expect(await fs.readlink(`/proc/${daemon.pid}/exe`)).toBe('/usr/lib/qemu/virtiofsd');
      // Its socket is QEMU's user's (0600); the folders on the daemon's way: sandboxes/ 0711, the sandbox folder 0710 of its group.
      expect(await fs.stat(daemon.socket)).toMatchObject({ uid: 65534, gid: 65534 });
      expect(modeOf(await fs.stat(daemon.socket))).toBe('0600');
      expect(modeOf(await fs.stat(path.dirname(sandbox.dir)))).toBe('0711');
      const folder = await fs.stat(sandbox.dir);
      expect([modeOf(folder), folder.uid, folder.gid]).toEqual(['0710', 0, BASE]);
      // The exported view is idmapped, read-only; the host's read-write tree is not idmapped.
      const info = (await fs.readFile('/proc/self/mountinfo', 'utf8')).split('\n');
      const optionsAt = (point: string): string | undefined => info.find((l) => l.split(' ')[4] === point)?.split(' ')[5];
      expect(optionsAt(path.join(sandbox.dir, 'shared'))).toMatch(/^ro,nosuid,nodev,noexec,.*idmapped/u);
      expect(optionsAt(path.join(sandbox.dir, 'share'))).not.toMatch(/idmapped/u);

      // A bundle of host root's files, with a read-write OCI bind of a host folder.
      const bundle = path.join(work, 'bundle');
      const rootfs = await busyboxRootfs(bundle);
      const data = path.join(work, 'data');
      await fs.mkdir(data, { mode: 0o755 });
      await fs.writeFile(path.join(data, 'from-host'), 'host\n');
      await fs.chown(path.join(data, 'from-host'), 1000, 1000);
      await fs.writeFile(
        path.join(bundle, 'config.json'),
        JSON.stringify({
          ociVersion: '1.0.2',
          process: {
            args: ['sh', '-c', [
              "stat -c '%n %u:%g' / /bin/busybox /etc/passwd /home/app /data /data/from-host",
              'echo by-root > /data/by-root',
              'echo in-rootfs > /scratch/by-root',
              "su app -s /bin/sh -c 'echo by-app > /data/by-app; id -u'",
              "stat -c '%n %u:%g' /data/by-root /data/by-app /scratch/by-root",
            ].join(' && ')],
            cwd: '/',
            env: ['PATH=/bin'],
          },
          root: { path: 'rootfs', readonly: false },
          mounts: [
            { destination: '/proc', type: 'proc', source: 'proc' },
            { destination: '/data', type: 'bind', source: data, options: ['rbind', 'rw'] },
          ],
        }),
      );
      await fs.chmod(path.join(data), 0o777); // app (guest 1000 = host 1000) may write there too
      const c = await sandbox.createContainer({ bundle });
      const out = collect(c.stdout);
      const err = collect(c.stderr);
      await c.start();
      const status = await c.wait();
      expect((await err).toString()).toBe('');
      expect(status.exitCode).toBe(0);
      expect((await out).toString().split('\n')).toEqual([
        '/ 0:0',
        '/bin/busybox 0:0',
        '/etc/passwd 0:0',
        '/home/app 1000:1000',
        '/data 0:0',
        '/data/from-host 1000:1000',
        '1000',
        '/data/by-root 0:0',
        '/data/by-app 1000:1000',
        '/scratch/by-root 0:0',
        '',
      ]);
      await c.delete();
      // On the host, each write is its writer's: guest root is host 0, guest 1000 host 1000 (not BASE + k).
      const owner = async (file: string): Promise<[number, number]> => {
        const s = await fs.stat(file);
        return [s.uid, s.gid];
      };
      expect(await fs.readFile(path.join(data, 'by-root'), 'utf8')).toBe('by-root\n');
      expect(await owner(path.join(data, 'by-root'))).toEqual([0, 0]);
      expect(await owner(path.join(data, 'by-app'))).toEqual([1000, 1000]);
      expect(await owner(path.join(rootfs, 'scratch', 'by-root'))).toEqual([0, 0]);

      // A read-only directory volume with a tmpfs mounted inside it on the host before it is attached.
      const volumeSource = path.join(work, 'volume');
      await fs.mkdir(path.join(volumeSource, 'sub'), { recursive: true });
      await fs.writeFile(path.join(volumeSource, 'top'), 'top\n');
      await mount(path.join(volumeSource, 'sub'), { source: 'vt-sub', fstype: 'tmpfs', data: 'size=1m,mode=0755' });
      hostMounts.push(path.join(volumeSource, 'sub'));
      await fs.writeFile(path.join(volumeSource, 'sub', 'inner'), 'inner\n');
      await fs.chown(path.join(volumeSource, 'sub', 'inner'), 1000, 1000);
      const volume = await sandbox.addVolume(Volume.directory('ro', volumeSource, { readOnly: true }));
      // On the host, both mounts of the bind are read-only and idmapped.
      const volumePoint = (await mountPoints()).find((m) => m.startsWith(path.join(sandbox.dir, 'shared', 'volumes', 'ro.')))!;
      const volumeMounts = (await fs.readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter((l) => l.split(' ')[4]?.startsWith(volumePoint));
      expect(volumeMounts).toHaveLength(2);
      for (const line of volumeMounts) expect(line.split(' ')[5]).toMatch(/^ro,nosuid,nodev,.*idmapped/u);
      // In the guest, root with the whole share bound read-write (what root in the guest has, through the raw agent API).
      const agent = await sandbox.agent();
      const guestShare = `${agent.info.stateDir}/shared`;
      expect(volume.guestPath?.startsWith(`${guestShare}/volumes/ro.`)).toBe(true);
      const inShare = `/share${volume.guestPath!.slice(guestShare.length)}`;
      await agent.createContainer({
        id: 'guest-root',
        rootfs: 'builtin',
        config: {
          ociVersion: '1.0.2',
          process: {
            args: ['sh', '-c', [
              `cd ${inShare}`,
              'cat top sub/inner',
              "stat -c '%n %u:%g' top sub sub/inner /share /share/volumes",
              'touch x 2>/dev/null && echo top-writable || echo top-read-only',
              'touch sub/x 2>/dev/null && echo sub-writable || echo sub-read-only',
              '(echo y >> sub/inner) 2>/dev/null && echo inner-writable || echo inner-read-only',
              'mkdir /share/volumes/new 2>/dev/null && echo tree-writable || echo tree-read-only',
            ].join('; ')],
            cwd: '/',
            env: ['PATH=/bin'],
          },
          root: { path: 'rootfs' },
          mounts: [
            { destination: '/proc', type: 'proc', source: 'proc' },
            { destination: '/share', type: 'bind', source: guestShare, options: ['rbind', 'rw'] },
          ],
          linux: { namespaces: [{ type: 'pid' }, { type: 'mount' }] },
        },
        stdio: { stdout: true, stderr: true },
      });
      const io = await agent.openStdio('guest-root', { stdout: true, stderr: true });
      const guestOut = collect(io.stdout);
      const guestErr = collect(io.stderr);
      await agent.startContainer('guest-root');
      await agent.wait('guest-root');
      await agent.deleteContainer('guest-root', { force: true });
      expect((await guestErr).toString()).toBe('');
      expect((await guestOut).toString().split('\n')).toEqual([
        'top',
        'inner',
        'top 0:0',
        'sub 0:0',
        'sub/inner 1000:1000',
        '/share 0:0',
        '/share/volumes 0:0',
        'top-read-only',
        'sub-read-only',
        'inner-read-only',
        'tree-read-only',
        '',
      ]);
      expect((await fs.readdir(volumeSource)).sort()).toEqual(['sub', 'top']);
      expect(await fs.readdir(path.join(volumeSource, 'sub'))).toEqual(['inner']);
      expect(await fs.readFile(path.join(volumeSource, 'sub', 'inner'), 'utf8')).toBe('inner\n');
      await sandbox.removeVolume('ro');

      // An overlayfs rootfs cannot be idmapped: a typed error naming it and why; nothing bound, recorded or made.
      for (const d of ['lower', 'upper', 'ovl-work', 'merged']) await fs.mkdir(path.join(work, d));
      const merged = path.join(work, 'merged');
      await mount(merged, { source: 'vt-ovl', fstype: 'overlay', data: `lowerdir=${rootfs},upperdir=${work}/upper,workdir=${work}/ovl-work` });
      hostMounts.push(merged);
      const refused = await sandbox.createContainer({ rootfs: merged, process: { args: ['true'] } }).catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(IdmapUnsupportedError);
      expect(refused).toMatchObject({ field: 'source', source: merged, filesystems: [`overlay at ${merged}`] });
      expect((refused as Error).message).toMatch(/cannot be shared through an idmapped mount.*EINVAL.*overlay at/u);
      expect(await sandbox.containers()).toEqual([]);
      const after = await sandbox.record();
      expect((after.resources['sharedFs'] as { binds: object }).binds).toEqual({});
      expect(await fs.readdir(path.join(sandbox.dir, 'share', 'rootfs'))).toEqual([]);
      expect((await mountPoints()).filter((m) => m.startsWith(`${path.join(sandbox.dir, 'shared')}/`))).toEqual([]);
      // The sandbox still works after the refusal.
      expect(await runScript(sandbox, { rootfs }, "stat -c '%u:%g' /bin/busybox")).toMatchObject({ code: 0, out: '0:0\n' });

      await sandbox.stop();
      // virtiofsd and every user namespace of the range went with the VM.
      expect(await rangeProcessesGone()).toEqual([]);
      expect((await mountPoints()).filter((m) => m.startsWith(sandbox.dir))).toEqual([]);

      // A second boot makes the share the same way, from the config.
      await sandbox.start();
      expect(await runScript(sandbox, { rootfs }, "stat -c '%u:%g' /bin/busybox /scratch/by-root")).toMatchObject({ code: 0, out: '0:0\n0:0\n' });
      await sandbox.stop();
      expect(await rangeProcessesGone()).toEqual([]);
      await sandbox.delete();
    } finally {
      await sandbox.delete({ force: true }).catch(() => undefined);
    }
    await expectNothingLeft(stateDir);
    expect(await rangeProcessesGone()).toEqual([]);
  });
});
