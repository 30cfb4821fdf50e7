/**
 * The files of the initramfs besides kernel modules: busybox with its applet links, the
 * guest's /etc, and the minimal builtin container rootfs at {@link GUEST_ROOTFS_PATH}.
 *
 * @module
 */
import type { CpioEntry } from './cpio.js';
import { GUEST_ROOTFS_PATH } from './init.js';

/** /etc files of the guest and of the builtin rootfs. */
export const ETC_FILES: Readonly<Record<string, string>> = {
  passwd: 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n',
  group: 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n',
  hosts: '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n',
};

/**
 * Busybox at `ROOT/bin/busybox` and one symlink per applet (paths from `busybox --list-full`,
 * e.g. `usr/bin/awk`), all pointing at the absolute `/bin/busybox`, which resolves inside a
 * container after pivot_root too.
 */
export function busyboxEntries(root: string, busybox: string, appletPaths: readonly string[]): CpioEntry[] {
  const prefix = root === '' ? '' : `${root}/`;
  const entries: CpioEntry[] = [{ type: 'file', path: `${prefix}bin/busybox`, mode: 0o755, source: busybox }];
  for (const applet of appletPaths) {
    if (applet === 'bin/busybox' || applet === 'linuxrc' || !/^[a-z/]+\/[A-Za-z0-9_.[\-]+$/u.test(applet)) continue;
    entries.push({ type: 'symlink', path: `${prefix}${applet}`, target: '/bin/busybox' });
  }
  return entries;
}

/** Empty directories of a root file system (`proc`, `sys`, ...), with their modes. */
function skeleton(prefix: string): CpioEntry[] {
  const dirs: [string, number][] = [
    ['dev', 0o755],
    ['proc', 0o555],
    ['sys', 0o555],
    ['tmp', 0o1777],
    ['run', 0o755],
    ['root', 0o700],
    ['etc', 0o755],
  ];
  return dirs.map(([name, mode]) => ({ type: 'dir' as const, path: `${prefix}${name}`, mode }));
}

function etc(prefix: string): CpioEntry[] {
  return Object.entries(ETC_FILES).map(([name, text]) => ({
    type: 'file' as const,
    path: `${prefix}etc/${name}`,
    mode: 0o644,
    data: Buffer.from(text),
  }));
}

/** The minimal container rootfs, under GUEST_ROOTFS_PATH. */
export function builtinRootfsEntries(busybox: string, appletPaths: readonly string[]): CpioEntry[] {
  const root = GUEST_ROOTFS_PATH.slice(1);
  const prefix = `${root}/`;
  return [
    { type: 'dir', path: root, mode: 0o755 },
    ...skeleton(prefix),
    ...etc(prefix),
    // Targets for the agent's bind mounts of a container's resolv.conf and hostname.
    { type: 'file', path: `${prefix}etc/resolv.conf`, mode: 0o644, data: Buffer.alloc(0) },
    { type: 'file', path: `${prefix}etc/hostname`, mode: 0o644, data: Buffer.alloc(0) },
    ...busyboxEntries(root, busybox, appletPaths),
  ];
}

/** The guest's own root: skeleton, /etc, busybox, /dev/console for the kernel's first open. */
export function guestRootEntries(busybox: string, appletPaths: readonly string[]): CpioEntry[] {
  return [
    ...skeleton(''),
    { type: 'dir', path: 'mnt', mode: 0o755 },
    { type: 'dir', path: 'sbin', mode: 0o755 },
    // The kernel opens /dev/console for init's stdio before /init mounts devtmpfs.
    { type: 'char', path: 'dev/console', mode: 0o600, major: 5, minor: 1 },
    ...etc(''),
    ...busyboxEntries('', busybox, appletPaths),
  ];
}
