/**
 * The host locks: which folder a call uses (the host's for /sys, one inside a generated tree,
 * or the one given), how it is created (0700) and which existing folders are refused, and that
 * a held lock makes the others wait (or time out, or be aborted).
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AbortError, InvalidArgumentError, TimeoutError } from '../../src/errors.js';
import { HostLockError } from '../../src/devices/errors.js';
import { DEFAULT_HOST_LOCK_DIR, acquireHostLock, hostLockDir } from '../../src/devices/host-lock.js';
import { releaseHugepages, reserveHugepages } from '../../src/devices/hugepages.js';
import { FakeSysfs } from './devices-fake-sysfs.js';

const root = process.getuid?.() === 0;
let sysfs: FakeSysfs;
let scratch: string;
beforeEach(async () => {
  sysfs = await FakeSysfs.create();
  await sysfs.addHugepages(2048, [0], 1024 * 1024);
  scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-locks-'));
});
afterEach(async () => {
  await sysfs.cleanup();
  await fs.rm(scratch, { recursive: true, force: true });
});

describe('the host lock folder', () => {
  it('is /run/lock/vmpod for the host sysfs, inside a generated tree otherwise, or the one given', async () => {
    expect(DEFAULT_HOST_LOCK_DIR).toBe('/run/lock/vmpod');
    expect(await hostLockDir()).toBe('/run/lock/vmpod');
    expect(await hostLockDir({ sysfs: '/sys' })).toBe('/run/lock/vmpod');
    expect(await hostLockDir({ sysfs })).toBe(path.join(sysfs.root, '.vmpod-lock'));
    expect(await hostLockDir({ sysfs: sysfs.root })).toBe(path.join(sysfs.root, '.vmpod-lock'));
    expect(await hostLockDir({ sysfs, lockDir: `${scratch}/x/../locks` })).toBe(`${scratch}/locks`);
    await expect(hostLockDir({ lockDir: 'relative/locks' })).rejects.toBeInstanceOf(InvalidArgumentError);
  });

  it('is created 0700 (parents too when given), whatever the umask', async () => {
    const old = process.umask(0o000);
    try {
      const given = path.join(scratch, 'a', 'b');
      const { dir, lock } = await acquireHostLock('hugepages-2048kB', { lockDir: given });
      await lock.release();
      expect(dir).toBe(given);
      expect((await fs.stat(given)).mode & 0o7777).toBe(0o700);
      expect(await fs.readdir(given)).toEqual(['hugepages-2048kB.lock']);
      expect((await fs.stat(path.join(given, 'hugepages-2048kB.lock'))).mode & 0o777).toBe(0o600);
      // The default inside a generated tree: made by the first reservation.
      await (await reserveHugepages({ size: '2M', count: 1 }, { sysfs })).release();
      expect((await fs.stat(sysfs.path('.vmpod-lock'))).mode & 0o7777).toBe(0o700);
      expect(await fs.readdir(sysfs.path('.vmpod-lock'))).toEqual(['hugepages-2048kB.lock']);
    } finally {
      process.umask(old);
    }
  });

  it('refuses a folder others can write to, a symlink, or a folder of another user, before any write', async () => {
    const open = path.join(scratch, 'open');
    await fs.mkdir(open);
    await fs.chmod(open, 0o1777);
    const error = await reserveHugepages({ size: '2M', count: 1 }, { sysfs, lockDir: open }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HostLockError);
    expect(error).toMatchObject({ code: 'ERR_VMPOD_HOST_LOCK', path: open });
    expect((error as Error).message).toBe(`cannot use ${open} for vmpod's host locks: others can write to it (mode 1777; use a folder of mode 0700)`);
    expect((await fs.stat(open)).mode & 0o7777).toBe(0o1777); // left as it was

    const target = path.join(scratch, 'target');
    await fs.mkdir(target, { mode: 0o700 });
    await fs.symlink(target, path.join(scratch, 'link'));
    await expect(releaseHugepages({ sizeBytes: 2 << 20, node: null, previous: 0, obtained: 1 }, { sysfs, lockDir: path.join(scratch, 'link') })).rejects.toThrow(
      /it is not a directory/u,
    );
    expect(sysfs.writes).toEqual([]);
  });

  it.skipIf(!root)('refuses a folder that belongs to another user (as root)', async () => {
    const theirs = path.join(scratch, 'theirs');
    await fs.mkdir(theirs, { mode: 0o700 });
    await fs.chown(theirs, 4242, 4242);
    await expect(acquireHostLock('vfio-group-1', { lockDir: theirs })).rejects.toThrow(/it belongs to uid 4242, not to this process's uid 0 \(remove it\)/u);
  });
});

describe('a held host lock', () => {
  it('makes a reservation wait for it, then time out (nothing written), or be aborted', async () => {
    const { lock } = await acquireHostLock('hugepages-2048kB', { sysfs });
    try {
      const started = Date.now();
      const error = await reserveHugepages({ size: '2M', count: 1 }, { sysfs, lockTimeoutMs: 150 }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(TimeoutError);
      expect(Date.now() - started).toBeGreaterThanOrEqual(150);
      expect((error as Error).message).toContain(sysfs.path('.vmpod-lock/hugepages-2048kB.lock'));
      const controller = new AbortController();
      const aborted = reserveHugepages({ size: '2M', count: 1 }, { sysfs, signal: controller.signal }).catch((e: unknown) => e);
      controller.abort();
      expect(await aborted).toBeInstanceOf(AbortError);
      expect(sysfs.writes).toEqual([]);
    } finally {
      await lock.release();
    }
    const r = await reserveHugepages({ size: '2M', count: 1 }, { sysfs, lockTimeoutMs: 0 });
    await r.release();
  });

  it('is per page size: another size does not wait', async () => {
    await sysfs.addHugepages(1048576, [0], 4 * 1024 * 1024);
    const { lock } = await acquireHostLock('hugepages-2048kB', { sysfs });
    try {
      const r = await reserveHugepages({ size: '1G', count: 1 }, { sysfs, lockTimeoutMs: 0 });
      await r.release();
    } finally {
      await lock.release();
    }
  });
});
