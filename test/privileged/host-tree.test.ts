/**
 * src/host/tree.ts on real mounts: path operations by fd refuse symlinks, `..` and mount
 * crossings; binds are read-only all the way down; removals check identity and never leave
 * their tree; unmounts check the mount id.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import { promisify } from 'node:util';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SystemError } from '../../src/errors.js';
import { mount, unmount } from '../../src/devices/mount.js';
import { Dir, IdmapUnsupportedError, TargetFile, bindMount, mountTable, unmountAt, withUserNamespace } from '../../src/host/tree.js';

const exec = promisify(execFile);
const root = process.getuid?.() === 0;
let dir: string;
const opened: Dir[] = [];

async function open(p: string): Promise<Dir> {
  const d = await Dir.open(p);
  opened.push(d);
  return d;
}

async function unmountAllUnder(where: string): Promise<void> {
  for (;;) {
    const inside = (await mountTable()).filter((m) => m.mountPoint === where || m.mountPoint.startsWith(`${where}/`));
    if (inside.length === 0) return;
    // deepest (longest, then newest) first
    inside.sort((a, b) => b.mountPoint.length - a.mountPoint.length || b.id - a.id);
    await unmount(inside[0]!.mountPoint, { detach: true });
  }
}

const errno = (e: unknown): string | undefined => (e instanceof SystemError ? e.errnoName : undefined);

describe.skipIf(!root)('path operations by fd (needs root)', () => {
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vt-tree-'));
  });
  afterEach(async () => {
    for (const d of opened.splice(0)) d.close();
    await unmountAllUnder(dir);
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('refuses symlinks, ".." and mount crossings on the way, and makes missing folders', async () => {
    const canary = path.join(dir, 'canary');
    await fs.mkdir(path.join(dir, 'tree', 'a'), { recursive: true });
    await fs.mkdir(canary);
    await fs.symlink(canary, path.join(dir, 'tree', 'link'));
    await fs.mkdir(path.join(dir, 'tree', 'mnt'));
    await mount(path.join(dir, 'tree', 'mnt'), { source: 'vt', fstype: 'tmpfs', data: 'size=1m' });
    const tree = await open(path.join(dir, 'tree'));

    expect(errno(await tree.open('link').catch((e: unknown) => e))).toBe('ELOOP');
    expect(errno(await tree.mkdirp('link/x').catch((e: unknown) => e))).toBe('ELOOP');
    expect(errno(await tree.open('mnt').catch((e: unknown) => e))).toBe('EXDEV');
    expect(errno(await tree.mkdirp('mnt/x').catch((e: unknown) => e))).toBe('EXDEV');
    await expect(tree.open('a/../..')).rejects.toThrow(/not one path component/u);
    expect(await fs.readdir(canary)).toEqual([]);

    const made = await tree.mkdirp('a/b/c');
    opened.push(made);
    expect((await fs.stat(path.join(dir, 'tree', 'a', 'b', 'c'))).isDirectory()).toBe(true);
    expect((await tree.open('mnt', { crossMounts: true }).then((d) => (opened.push(d), 'opened')))).toBe('opened');
  });

  it('removes only the recorded file: a replaced entry is refused with ESTALE', async () => {
    const tree = await open(dir);
    const id = await tree.mkdir('d');
    await fs.rename(path.join(dir, 'd'), path.join(dir, 'moved'));
    await fs.mkdir(path.join(dir, 'd'));
    expect(errno(await tree.remove('d', id, 'dir').catch((e: unknown) => e))).toBe('ESTALE');
    expect((await fs.stat(path.join(dir, 'd'))).isDirectory()).toBe(true);
    await fs.rmdir(path.join(dir, 'd'));
    await fs.symlink(path.join(dir, 'moved'), path.join(dir, 'd'));
    expect(errno(await tree.remove('d', id, 'dir').catch((e: unknown) => e))).toBe('ESTALE');
    await fs.rm(path.join(dir, 'd'));
    await fs.rename(path.join(dir, 'moved'), path.join(dir, 'd'));
    await tree.remove('d', id, 'dir');
    await expect(fs.stat(path.join(dir, 'd'))).rejects.toMatchObject({ code: 'ENOENT' });
    await tree.remove('d', id, 'dir'); // gone already: fine
  });

  it('removes a tree without following symlinks or entering mounts', async () => {
    const canary = path.join(dir, 'canary');
    await fs.mkdir(canary);
    await fs.writeFile(path.join(canary, 'keep'), 'x');
    const victim = path.join(dir, 'victim');
    await fs.mkdir(path.join(victim, 'sub'), { recursive: true });
    await fs.writeFile(path.join(victim, 'sub', 'f'), 'x');
    await fs.symlink(canary, path.join(victim, 'link'));
    await fs.symlink(canary, path.join(victim, 'sub', 'link2'));
    const tree = await open(dir);
    await tree.removeTree('victim');
    await expect(fs.stat(victim)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await fs.readFile(path.join(canary, 'keep'), 'utf8')).toBe('x');

    await fs.mkdir(path.join(victim, 'm'), { recursive: true });
    await mount(path.join(victim, 'm'), { source: canary, flags: ['bind'] });
    const busy = await tree.removeTree('victim').catch((e: unknown) => e);
    expect(errno(busy)).toBe('EBUSY');
    expect((busy as Error).message).toMatch(/victim\/m/u);
    expect(await fs.readFile(path.join(canary, 'keep'), 'utf8')).toBe('x');
    await unmount(path.join(victim, 'm'));
    await tree.removeTree('victim');
    await tree.removeTree('victim');
  });

  it('binds read-only all the way down, nosuid and nodev, and unmounts by mount id', async () => {
    const source = path.join(dir, 'source');
    await fs.mkdir(path.join(source, 'sub'), { recursive: true });
    await mount(path.join(source, 'sub'), { source: 'vt', fstype: 'tmpfs', data: 'size=1m' });
    await fs.mkdir(path.join(dir, 'share', 'vol'), { recursive: true });
    const share = await open(path.join(dir, 'share'));
    const target = await share.open('vol');
    opened.push(target);
    const mntId = await bindMount(source, target, { readOnly: true });
    const point = path.join(dir, 'share', 'vol');
    const mounts = await mountTable();
    expect(mounts.find((m) => m.id === mntId)?.mountPoint).toBe(point);
    await expect(fs.writeFile(path.join(point, 'x'), 'x')).rejects.toMatchObject({ code: 'EROFS' });
    await expect(fs.writeFile(path.join(point, 'sub', 'x'), 'x')).rejects.toMatchObject({ code: 'EROFS' });
    const info = (await fs.readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter((l) => l.split(' ')[4]?.startsWith(point));
    expect(info).toHaveLength(2);
    for (const line of info) expect(line.split(' ')[5]).toMatch(/^ro,nosuid,nodev/u);

    // Another mount on top: the recorded one is covered, and is not what the fd opens.
    await mount(point, { source: 'vt', fstype: 'tmpfs', data: 'size=1m' });
    expect(errno(await unmountAt(share, 'vol', mntId, point).catch((e: unknown) => e))).toBe('ESTALE');
    await unmount(point);
    expect(await unmountAt(share, 'vol', mntId, point)).toBe('unmounted');
    expect((await mountTable()).some((m) => m.mountPoint.startsWith(point))).toBe(false);
    expect(await unmountAt(share, 'vol', mntId, point)).toBe('absent');
  });

  it('binds a file on a file, and a read-write bind stays writable', async () => {
    await fs.writeFile(path.join(dir, 'src-file'), 'content');
    await fs.mkdir(path.join(dir, 'share'));
    const share = await open(path.join(dir, 'share'));
    await share.createFile('f');
    const file = await TargetFile.open(share, 'f');
    const mntId = await bindMount(path.join(dir, 'src-file'), file, { readOnly: false });
    file.close();
    expect(await fs.readFile(path.join(dir, 'share', 'f'), 'utf8')).toBe('content');
    await fs.writeFile(path.join(dir, 'share', 'f'), 'changed');
    expect(await fs.readFile(path.join(dir, 'src-file'), 'utf8')).toBe('changed');
    expect(await unmountAt(share, 'f', mntId, path.join(dir, 'share', 'f'))).toBe('unmounted');
  });

  it('idmaps every mount of a bind before it is attached, and refuses an overlay naming it; no namespace holder is left', async () => {
    const BASE = 300000;
    const map = { uid: BASE, gid: BASE, count: 65536 };
    const source = path.join(dir, 'source');
    await fs.mkdir(path.join(source, 'sub'), { recursive: true });
    await fs.writeFile(path.join(source, 'root-file'), 'r');
    await mount(path.join(source, 'sub'), { source: 'vt', fstype: 'tmpfs', data: 'size=1m' });
    await fs.writeFile(path.join(source, 'sub', 'user-file'), 'u');
    await fs.chown(path.join(source, 'sub', 'user-file'), 1000, 1000);
    await fs.writeFile(path.join(source, 'far'), 'f');
    await fs.chown(path.join(source, 'far'), 70000, 70000); // outside 0..65535
    await fs.mkdir(path.join(dir, 'share', 'vol'), { recursive: true });
    const share = await open(path.join(dir, 'share'));
    const target = await share.open('vol');
    opened.push(target);
    const point = path.join(dir, 'share', 'vol');

    let nsInode = 0;
    const mntId = await withUserNamespace(map, async (usernsFd) => {
      nsInode = (await fs.stat(`/proc/self/fd/${usernsFd}`)).ino;
      return bindMount(source, target, { readOnly: false, idmap: { usernsFd } });
    });
    expect(nsInode).toBeGreaterThan(0);
    // Both mounts of the tree are idmapped: host k is seen as BASE + k; an id outside the range as overflow.
    const info = (await fs.readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter((l) => l.split(' ')[4]?.startsWith(point));
    expect(info).toHaveLength(2);
    for (const line of info) expect(line.split(' ')[5]).toMatch(/idmapped/u);
    expect((await mountTable()).find((m) => m.id === mntId)?.mountPoint).toBe(point);
    const owner = async (p: string): Promise<[number, number]> => {
      const s = await fs.lstat(p);
      return [s.uid, s.gid];
    };
    expect(await owner(path.join(point, 'root-file'))).toEqual([BASE, BASE]);
    expect(await owner(path.join(point, 'sub', 'user-file'))).toEqual([BASE + 1000, BASE + 1000]);
    expect(await owner(path.join(point, 'far'))).toEqual([65534, 65534]);
    // Written through it by uid BASE (the owner of the range's 0): stored as host 0. Host root, outside the range, cannot write through it.
    await fs.chmod(dir, 0o711);
    await fs.chmod(path.join(source, 'sub'), 0o777);
    await exec('setpriv', [`--reuid=${BASE}`, `--regid=${BASE}`, '--clear-groups', '--', 'sh', '-c', `echo n > ${path.join(point, 'sub', 'new')}`]);
    expect(await owner(path.join(source, 'sub', 'new'))).toEqual([0, 0]);
    expect(await owner(path.join(point, 'sub', 'new'))).toEqual([BASE, BASE]);
    await expect(fs.writeFile(path.join(point, 'sub', 'root-new'), 'x')).rejects.toMatchObject({ code: 'EOVERFLOW' });
    // The namespace lives on as the mount's reference only: no process is in it.
    const holders: number[] = [];
    for (const pid of (await fs.readdir('/proc')).filter((n) => /^\d+$/u.test(n))) {
      const ns = await fs.stat(`/proc/${pid}/ns/user`).catch(() => undefined);
      if (ns?.ino === nsInode) holders.push(Number(pid));
    }
    expect(holders).toEqual([]);
    expect(await unmountAt(share, 'vol', mntId, point)).toBe('unmounted');
    expect((await mountTable()).some((m) => m.mountPoint.startsWith(point))).toBe(false);

    // An overlay cannot be idmapped: a typed error naming the source and its filesystem; nothing attached.
    for (const d of ['lower', 'upper', 'work', 'merged']) await fs.mkdir(path.join(dir, d));
    await mount(path.join(dir, 'merged'), { source: 'vt', fstype: 'overlay', data: `lowerdir=${dir}/lower,upperdir=${dir}/upper,workdir=${dir}/work` });
    const refused = await withUserNamespace(map, (usernsFd) => bindMount(path.join(dir, 'merged'), target, { readOnly: true, idmap: { usernsFd } })).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(IdmapUnsupportedError);
    expect(refused).toMatchObject({ field: 'source', source: path.join(dir, 'merged'), filesystems: [`overlay at ${path.join(dir, 'merged')}`] });
    expect((refused as Error).message).toMatch(/EINVAL/u);
    expect((await mountTable()).some((m) => m.mountPoint.startsWith(point))).toBe(false);
    // Bad maps are refused before anything runs.
    await expect(withUserNamespace({ uid: 0, gid: BASE, count: 1 }, async () => 0)).rejects.toMatchObject({ field: 'idmap.uid' });
    await expect(withUserNamespace({ uid: 2 ** 32 - 10, gid: BASE, count: 65536 }, async () => 0)).rejects.toMatchObject({ field: 'idmap.count' });
  });
});
