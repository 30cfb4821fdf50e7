import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { native } from '../../src/native.js';
import type { Mount } from '../../src/shim/proto/index.js';
import { MAX_LOWER_DIRS, MAX_ROOTFS_MOUNTS, mountRootfs, planRootfsMount, unmountRootfs } from '../../src/shim/rootfs.js';
import { GrpcCode, TtrpcError } from '../../src/shim/ttrpc/status.js';

const overlay = (options: string[], extra: Partial<Mount> = {}): Mount => ({ type: 'overlay', source: 'overlay', target: '', options, ...extra });
const snap = (n: number): string => `/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/${n}/fs`;

let bundle: string;
beforeEach(() => {
  bundle = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-shim-rootfs-'));
});
afterEach(() => {
  fs.rmSync(bundle, { recursive: true, force: true });
});

describe('planRootfsMount', () => {
  it('takes the overlayfs snapshotter\'s mount as it is', () => {
    const work = '/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/3/work';
    const plan = planRootfsMount(overlay(['index=off', `workdir=${work}`, `upperdir=${snap(3)}`, `lowerdir=${snap(2)}:${snap(1)}`]), 0);
    expect(plan).toMatchObject({ kind: 'overlay', lower: [snap(2), snap(1)], upper: snap(3), flags: 0 });
    expect(plan.kind === 'overlay' && plan.data).toBe(`index=off,workdir=${work},upperdir=${snap(3)},lowerdir=${snap(2)}:${snap(1)}`);
  });

  it('takes a read-only view (lowerdirs only, ro) and the native snapshotter\'s bind', () => {
    const ro = planRootfsMount(overlay(['ro', `lowerdir=${snap(2)}:${snap(1)}`]), 0);
    expect(ro).toMatchObject({ kind: 'overlay', upper: undefined, flags: native().mountConstants.MS_RDONLY, data: `lowerdir=${snap(2)}:${snap(1)}` });
    const bind = planRootfsMount({ type: 'bind', source: '/var/lib/containerd/native/snapshots/4', target: '', options: ['rbind', 'ro'] }, 0);
    expect(bind).toEqual({ kind: 'bind', source: '/var/lib/containerd/native/snapshots/4', recursive: true, flags: native().mountConstants.MS_RDONLY });
  });

  it.each<[string, Mount, RegExp]>([
    ['an unknown type', { type: 'ext4', source: '/dev/sda1', target: '', options: [] }, /type "ext4" is not supported/],
    ['a target', overlay([`lowerdir=${snap(1)}:${snap(2)}`], { target: '/x' }), /a target .* is not supported/],
    ['an option off the list', overlay([`lowerdir=${snap(1)}:${snap(2)}`, 'suid']), /option "suid" is not allowed/],
    ['a device option', overlay([`lowerdir=${snap(1)}:${snap(2)}`, 'dev']), /option "dev" is not allowed/],
    ['a bad value', overlay([`lowerdir=${snap(1)}:${snap(2)}`, 'index=maybe']), /"index" is one of on, off/],
    ['no lowerdir', overlay([`upperdir=${snap(3)}`, `workdir=${snap(4)}`]), /needs lowerdir/],
    ['an upperdir without workdir', overlay([`lowerdir=${snap(1)}`, `upperdir=${snap(3)}`]), /upperdir and workdir go together/],
    ['a relative lowerdir', overlay(['lowerdir=snapshots/1/fs:/a']), /lowerdir 0 .* not an absolute path/],
    ['a lowerdir with ..', overlay([`lowerdir=${snap(1)}:/var/lib/../../etc`]), /lowerdir 1 .* not normalised/],
    ['an empty layer', overlay([`lowerdir=${snap(1)}::${snap(2)}`]), /lowerdir 1 "" is not an absolute path/],
    ['an escaped character', overlay([`lowerdir=${snap(1)}\\:x`]), /cannot carry/],
    ['an option given twice', overlay([`lowerdir=${snap(1)}`, `lowerdir=${snap(2)}`]), /"lowerdir" is given twice/],
    ['a source that is a path', overlay([`lowerdir=${snap(1)}:${snap(2)}`], { source: '/etc' }), /source of an overlay is a name/],
    ['a relative bind', { type: 'bind', source: 'x/y', target: '', options: ['rbind'] }, /not an absolute path/],
    ['a bind option off the list', { type: 'bind', source: '/x', target: '', options: ['rbind', 'shared'] }, /option "shared" is not allowed/],
    ['too many layers', overlay([`lowerdir=${Array.from({ length: MAX_LOWER_DIRS + 1 }, (_, i) => `/l/${i}`).join(':')}`]), /lower layers, at most/],
    ['options over a page', overlay([`lowerdir=${Array.from({ length: 60 }, (_, i) => snap(i)).join(':')}`]), /over the kernel's limit of 4095 \(60 layers\)/],
  ])('refuses %s', (_name, mount, message) => {
    let error: unknown;
    try {
      planRootfsMount(mount, 0);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(TtrpcError);
    expect((error as TtrpcError).grpcCode).toBe(GrpcCode.INVALID_ARGUMENT);
    expect((error as Error).message).toMatch(message);
  });
});

describe('mountRootfs / unmountRootfs refusals (before any system call)', () => {
  it('refuses a bad mount anywhere in the list and touches nothing (no rootfs made)', async () => {
    const good = overlay([`lowerdir=${snap(1)}:${snap(2)}`]);
    await expect(mountRootfs(bundle, [good, overlay(['lowerdir=../x'])])).rejects.toThrow(/mount 1/);
    expect(fs.existsSync(path.join(bundle, 'rootfs'))).toBe(false);
  });

  it('refuses too many mounts and a bundle that is not absolute', async () => {
    const many = Array.from({ length: MAX_ROOTFS_MOUNTS + 1 }, () => overlay([`lowerdir=${snap(1)}:${snap(2)}`]));
    await expect(mountRootfs(bundle, many)).rejects.toThrow(/17 mounts, at most 16/);
    await expect(mountRootfs('relative/bundle', [])).rejects.toThrow(/not an absolute, normalised path/);
    await expect(unmountRootfs(`${bundle}/../x`)).rejects.toThrow(TtrpcError);
  });

  it('no mounts: nothing to do; unmount of nothing mounted, or of no rootfs at all, is fine', async () => {
    await mountRootfs(bundle, []);
    expect(fs.existsSync(path.join(bundle, 'rootfs'))).toBe(false);
    await unmountRootfs(bundle);
    fs.mkdirSync(path.join(bundle, 'rootfs'));
    await unmountRootfs(bundle);
    await unmountRootfs(bundle);
  });
});
