/** mount(2)/umount2(2) through the addon, on tmpfs mounts made under a temp directory. */
import { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SystemError } from '../../src/errors.js';
import { mount, unmount } from '../../src/devices/mount.js';

const root = process.getuid?.() === 0;
let dir: string;
let target: string;

const mountInfo = async (where: string): Promise<string[] | undefined> => {
  const line = (await fs.readFile('/proc/self/mountinfo', 'utf8')).split('\n').find((l) => l.split(' ')[4] === where);
  return line?.split(' ');
};

describe.skipIf(!root)('mount and unmount (needs root)', () => {
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-mnt-'));
    target = path.join(dir, 'm');
    await fs.mkdir(target);
  });
  afterEach(async () => {
    while (await mountInfo(target)) await unmount(target, { detach: true });
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('mounts with flags and data, remounts read-only, and unmounts', async () => {
    await mount(target, { source: 'vmpodtest', fstype: 'tmpfs', flags: ['nosuid', 'nodev', 'noexec'], data: 'size=1m,mode=0711' });
    const fields = await mountInfo(target);
    expect(fields?.[5]).toMatch(/^rw,nosuid,nodev,noexec/u);
    expect(fields?.slice(-3)).toEqual(['tmpfs', 'vmpodtest', 'rw,size=1024k,mode=711']);
    await fs.writeFile(path.join(target, 'f'), 'x');

    await mount(target, { flags: ['remount', 'ro', 'nosuid', 'nodev', 'noexec'] });
    expect((await mountInfo(target))?.[5]).toMatch(/^ro,/u);
    await expect(fs.writeFile(path.join(target, 'g'), 'x')).rejects.toMatchObject({ code: 'EROFS' });

    await unmount(target);
    expect(await mountInfo(target)).toBeUndefined();
    expect(existsSync(path.join(target, 'f'))).toBe(false);
  });

  it('reports the kernel errno as a SystemError', async () => {
    const missing = await mount(path.join(dir, 'nope'), { source: 'x', fstype: 'tmpfs' }).catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(SystemError);
    expect(missing).toMatchObject({ errnoName: 'ENOENT', syscall: 'mount', errno: 2 });
    const notMounted = await unmount(target).catch((e: unknown) => e);
    expect(notMounted).toMatchObject({ errnoName: 'EINVAL', syscall: 'umount2' });
    const badFs = await mount(target, { source: 'x', fstype: 'nosuchfs' }).catch((e: unknown) => e);
    expect(badFs).toMatchObject({ errnoName: 'ENODEV' });
  });

  it('changes propagation without a source: shared, then private', async () => {
    await mount(target, { source: 'vmpodtest', fstype: 'tmpfs', data: 'size=1m' });
    // Optional fields (shared:N, master:N) sit between field 6 and the "-" separator.
    await mount(target, { flags: ['shared'] });
    expect((await mountInfo(target))?.[6]).toMatch(/^shared:\d+$/u);
    await mount(target, { flags: ['private'] });
    expect((await mountInfo(target))?.[6]).toBe('-');
  });
});
