import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, SystemError } from '../../src/errors.js';
import { mount, unmount } from '../../src/devices/mount.js';
import { systemError } from '../../src/native-call.js';

describe('mount input checks (before any syscall)', () => {
  it('rejects relative targets, odd filesystem types, NUL bytes and unknown flags', async () => {
    await expect(mount('relative/dir', { fstype: 'tmpfs' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(mount('/mnt/x', { fstype: 'tmpfs,uid=0' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(mount('/mnt/x', { fstype: 'tmpfs', data: 'size=1m\0' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(mount('/mnt/x', { source: '', fstype: 'tmpfs' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(mount('/mnt/x', { fstype: 'tmpfs', flags: ['suid' as 'nosuid'] })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(unmount('mnt/x')).rejects.toBeInstanceOf(InvalidArgumentError);
  });

  it('turns an addon rejection into a SystemError and leaves other errors alone', () => {
    const raw = Object.assign(new Error('umount2 /x: Device or resource busy'), { code: 'EBUSY', errno: 16, syscall: 'umount2' });
    const e = systemError(raw);
    expect(e).toBeInstanceOf(SystemError);
    expect(e).toMatchObject({ errnoName: 'EBUSY', errno: 16, syscall: 'umount2', message: 'umount2: /x: Device or resource busy (EBUSY)', cause: raw });
    const other = new TypeError('flags must be a number');
    expect(systemError(other)).toBe(other);
  });
});
