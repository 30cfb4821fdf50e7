/**
 * virtiofsd without root (`Virtiofsd.start({ user })`): it runs as an unprivileged host uid, in a
 * user namespace of its own whose ids 0..count-1 are the host's uid..uid+count-1. The guest sees a
 * file of host uid `uid + k` as owned by `k`, root in the guest acts as root on the files of the
 * range (reads a 0600 file, writes, creates, chowns), and host ids outside the range (host root's
 * files) appear as 65534, which the guest cannot take over. QEMU runs as nobody (`runAs`) too: it
 * connects the shares it starts with before it drops root, and a share hot plugged later through
 * `socketOwner`.
 */
import { randomInt } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import type { GuestAssets } from '../../src/guest/index.js';
import { INIT_MARKER } from '../../src/guest/init.js';
import { DaemonError, QmpError } from '../../src/hypervisor/errors.js';
import { QemuHypervisor } from '../../src/hypervisor/qemu/hypervisor.js';
import { Virtiofsd } from '../../src/hypervisor/virtiofsd.js';
import { testGuestAssets } from './guest-fixture.js';
import { GuestShell, makeRunDir, vmConfig } from './hypervisor-fixture.js';

const hypervisor = new QemuHypervisor();
let assets: GuestAssets;
const cleanups: (() => Promise<void> | void)[] = [];

/** A range of host ids no one uses: 65536 ids at a random multiple of 65536 above 2^30. */
const BASE = 2 ** 30 + randomInt(0, 2 ** 13) * 65536;
const USER = { uid: BASE, gid: BASE, count: 65536 };
const NOBODY = { uid: 65534, gid: 65534 };

beforeAll(async () => {
  assets = (await testGuestAssets()).assets;
});
afterEach(async () => {
  for (const step of cleanups.splice(0).reverse()) {
    try {
      await step();
    } catch {
      // keep cleaning
    }
  }
});

/** A temp folder every uid can traverse (the daemon, or QEMU after -runas, must reach what is in it). */
function openDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.chmodSync(dir, 0o711);
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Fields of /proc/PID/status as the host sees them. */
function status(pid: number): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const line of fs.readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const at = line.indexOf(':');
    if (at > 0) fields[line.slice(0, at)] = line.slice(at + 1).trim();
  }
  return fields;
}

function children(pid: number): number[] {
  try {
    return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/u).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** Pids of the processes in user namespace `ns` (`user:[INODE]`), once they are `expected` (or after 2 s: a process that was let go takes a moment). */
async function inUserNamespace(ns: string, expected: number[]): Promise<number[]> {
  const deadline = Date.now() + 2000;
  for (;;) {
    const pids: number[] = [];
    for (const entry of fs.readdirSync('/proc')) {
      if (!/^\d+$/u.test(entry)) continue;
      try {
        if (fs.readlinkSync(`/proc/${entry}/ns/user`) === ns) pids.push(Number(entry));
      } catch {
        // gone meanwhile
      }
    }
    pids.sort((a, b) => a - b);
    if (pids.join() === expected.join() || Date.now() > deadline) return pids;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Pids of the processes whose user namespace maps 0 to host uid `uid` (waits up to 2 s for them to go). */
async function mappedTo(uid: number): Promise<number[]> {
  const deadline = Date.now() + 2000;
  for (;;) {
    const pids: number[] = [];
    for (const entry of fs.readdirSync('/proc')) {
      if (!/^\d+$/u.test(entry)) continue;
      try {
        const [inside, outside] = fs.readFileSync(`/proc/${entry}/uid_map`, 'utf8').trim().split(/\s+/u).map(Number);
        if (inside === 0 && outside === uid) pids.push(Number(entry));
      } catch {
        // gone meanwhile
      }
    }
    if (pids.length === 0 || Date.now() > deadline) return pids;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A share whose files belong to the range (as an unpacked rootless image would), plus one of host root's. */
function makeShare(): string {
  const share = path.join(openDir('vt-share-'), 'share');
  fs.mkdirSync(share, { mode: 0o755 });
  const own = (file: string, k: number): void => fs.chownSync(path.join(share, file), BASE + k, BASE + k);
  fs.writeFileSync(path.join(share, 'hello.txt'), 'hello from the host\n', { mode: 0o644 });
  own('hello.txt', 0);
  fs.writeFileSync(path.join(share, 'secret'), 'root only\n', { mode: 0o600 });
  own('secret', 0);
  fs.writeFileSync(path.join(share, 'user-file'), 'of uid 1000\n', { mode: 0o644 });
  own('user-file', 1000);
  fs.writeFileSync(path.join(share, 'host-root-file'), 'of host root\n', { mode: 0o644 });
  own('.', 0);
  return share;
}

describe('virtio-fs served by a virtiofsd without root (Virtiofsd.start user)', () => {
  it('microvm, QEMU as nobody: the daemon is the unprivileged uid; the guest owns the files of the range and nothing else', async () => {
    const runDir = makeRunDir();
    cleanups.push(() => fs.rmSync(runDir, { recursive: true, force: true }));
    const share = makeShare();
    const socket = path.join(runDir, 'fs0.sock');
    const daemon = await Virtiofsd.start({ sharedDir: share, socket, logFile: path.join(runDir, 'virtiofsd.log'), user: USER });
    cleanups.push(() => daemon.stop());
    const pid = daemon.handle.pid;

    // The daemon: every uid and gid is the unprivileged one, no groups, in a user namespace of its own mapped as asked.
    const own = status(pid);
    expect(own['Uid']!.split(/\s+/u).map(Number)).toEqual([BASE, BASE, BASE, BASE]);
    expect(own['Gid']!.split(/\s+/u).map(Number)).toEqual([BASE, BASE, BASE, BASE]);
    expect(own['Groups']).toBe('');
    expect(fs.readlinkSync(`/proc/${pid}/exe`)).toBe('/usr/lib/qemu/virtiofsd');
    const ns = fs.readlinkSync(`/proc/${pid}/ns/user`);
    expect(ns).not.toBe(fs.readlinkSync('/proc/self/ns/user'));
    expect(fs.readFileSync(`/proc/${pid}/uid_map`, 'utf8').trim().split(/\s+/u).map(Number)).toEqual([0, BASE, 65536]);
    expect(fs.readFileSync(`/proc/${pid}/gid_map`, 'utf8').trim().split(/\s+/u).map(Number)).toEqual([0, BASE, 65536]);
    // The namespace's holder is gone: virtiofsd alone is in it.
    expect(await inUserNamespace(ns, [pid])).toEqual([pid]);
    // The socket is root's (QEMU connects the devices it starts with before any -runas).
    expect(fs.statSync(socket)).toMatchObject({ uid: 0, gid: 0, mode: expect.any(Number) });
    expect(fs.statSync(socket).mode & 0o777).toBe(0o600);

    const vm = await hypervisor.start(
      vmConfig(assets, runDir, 'microvm', { memory: { sizeMiB: 256, backend: { kind: 'memfd' } }, runAs: NOBODY }, [{ kind: 'vhost-user-fs', id: 'fs0', socket, tag: 'share' }]),
    );
    cleanups.push(async () => {
      if (!vm.exited) await vm.kill();
    });
    await vm.waitForConsole(INIT_MARKER, { timeoutMs: 120_000 });
    // Neither process is root: QEMU connected to the root-owned socket before it dropped to nobody.
    expect(status(vm.handle.pid)['Uid']!.split(/\s+/u).map(Number)).toEqual([65534, 65534, 65534, 65534]);
    const shell = await GuestShell.connect(path.join(runDir, 'test.sock'));
    cleanups.push(() => shell.close());

    expect(await shell.run('mkdir -p /mnt/share && mount -t virtiofs share /mnt/share && cat /mnt/share/hello.txt')).toEqual({ output: 'hello from the host\n', status: 0 });
    // Owners as the guest sees them: the range shifted down to 0, host root's file as overflow.
    const listing = await shell.run("cd /mnt/share && stat -c '%n %u:%g %a' . hello.txt secret user-file host-root-file");
    expect(listing).toEqual({ output: ['. 0:0 755', 'hello.txt 0:0 644', 'secret 0:0 600', 'user-file 1000:1000 644', 'host-root-file 65534:65534 644', ''].join('\n'), status: 0 });

    // Root in the guest is root over the range: reads a 0600 file, writes, creates, chowns, makes a fifo and a symlink.
    expect(await shell.run('cat /mnt/share/secret')).toEqual({ output: 'root only\n', status: 0 });
    expect((await shell.run('echo appended >> /mnt/share/hello.txt && echo x >> /mnt/share/user-file')).status).toBe(0);
    expect((await shell.run('echo new > /mnt/share/new && mkdir /mnt/share/dir && echo mine > /mnt/share/mine && chown 1000:1000 /mnt/share/mine')).status).toBe(0);
    expect((await shell.run('mkfifo /mnt/share/fifo && ln -s hello.txt /mnt/share/link && sync')).status).toBe(0);
    expect(await shell.run("cd /mnt/share && stat -c '%n %u:%g' new dir mine fifo && readlink link")).toEqual({
      output: 'new 0:0\ndir 0:0\nmine 1000:1000\nfifo 0:0\nhello.txt\n',
      status: 0,
    });
    // What the host has: the range, shifted up.
    const owner = (name: string): [number, number] => {
      const s = fs.lstatSync(path.join(share, name));
      return [s.uid, s.gid];
    };
    expect(fs.readFileSync(path.join(share, 'hello.txt'), 'utf8')).toBe('hello from the host\nappended\n');
    expect(fs.readFileSync(path.join(share, 'new'), 'utf8')).toBe('new\n');
    expect([owner('new'), owner('dir'), owner('fifo'), owner('link'), owner('hello.txt')]).toEqual(Array(5).fill([BASE, BASE]));
    expect(owner('mine')).toEqual([BASE + 1000, BASE + 1000]);
    expect(owner('user-file')).toEqual([BASE + 1000, BASE + 1000]);

    // Host root's file is no one's in the guest: readable as "others", neither writable nor chownable, not even by guest root.
    expect(await shell.run('cat /mnt/share/host-root-file')).toEqual({ output: 'of host root\n', status: 0 });
    expect(await shell.run('echo x >> /mnt/share/host-root-file')).toMatchObject({ output: expect.stringContaining('Permission denied'), status: 1 });
    expect(await shell.run('chown 0:0 /mnt/share/host-root-file')).toMatchObject({ output: expect.stringContaining('Operation not permitted'), status: 1 });
    expect(await shell.run('chmod 666 /mnt/share/host-root-file')).toMatchObject({ output: expect.stringContaining('Operation not permitted'), status: 1 });
    expect(fs.readFileSync(path.join(share, 'host-root-file'), 'utf8')).toBe('of host root\n');
    expect(fs.statSync(path.join(share, 'host-root-file'))).toMatchObject({ uid: 0, gid: 0 });
    expect(fs.statSync(path.join(share, 'host-root-file')).mode & 0o777).toBe(0o644);

    // Confined (sandbox=chroot, the default with user): the same process, its root the share, off the host's network, alone in its namespaces.
    expect(fs.readdirSync(`/proc/${pid}/root`).sort()).toEqual(fs.readdirSync(share).sort());
    const net = fs.readlinkSync(`/proc/${pid}/ns/net`);
    expect(net).not.toBe(fs.readlinkSync('/proc/self/ns/net'));
    const links = fs.readFileSync(`/proc/${pid}/net/dev`, 'utf8').split('\n').slice(2).filter(Boolean).map((line) => line.split(':')[0]!.trim());
    expect(links).toEqual(['lo']);
    expect(children(pid)).toEqual([]);
    expect(await inUserNamespace(ns, [pid])).toEqual([pid]);

    const result = await vm.shutdown({ graceful: async () => shell.send('umount /mnt/share; poweroff -f') });
    expect(result.method).toBe('graceful');
    await daemon.waitForExit(AbortSignal.timeout(10_000));
    expect(daemon.running).toBe(false);
    await daemon.stop();
    expect(fs.existsSync(socket)).toBe(false);
    expect(await inUserNamespace(ns, [])).toEqual([]);
    expect(await mappedTo(BASE)).toEqual([]);
  });

  it('q35: a QEMU that dropped root connects to a hot plugged share through socketOwner', async () => {
    const runDir = makeRunDir();
    cleanups.push(() => fs.rmSync(runDir, { recursive: true, force: true }));
    fs.chmodSync(runDir, 0o711); // QEMU, once nobody, must reach the sockets
    const share = makeShare();
    const vm = await hypervisor.start(
      vmConfig(assets, runDir, 'q35', { memory: { sizeMiB: 256, backend: { kind: 'memfd' } }, hotplugPorts: 2, runAs: NOBODY }),
    );
    cleanups.push(async () => {
      if (!vm.exited) await vm.kill();
    });
    await vm.waitForConsole(INIT_MARKER, { timeoutMs: 120_000 });
    expect(status(vm.handle.pid)['Uid']!.split(/\s+/u).map(Number)).toEqual([65534, 65534, 65534, 65534]);
    const shell = await GuestShell.connect(path.join(runDir, 'test.sock'));
    cleanups.push(() => shell.close());

    // Without socketOwner the socket is root's 0600: QEMU (nobody) cannot connect.
    const closed = await Virtiofsd.start({ sharedDir: share, socket: path.join(runDir, 'fs0.sock'), logFile: path.join(runDir, 'virtiofsd0.log'), user: USER });
    cleanups.push(() => closed.stop());
    const refused = await vm.hotplug({ kind: 'vhost-user-fs', id: 'fs0', socket: closed.handle.socket, tag: 'share0' }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(QmpError);
    expect((refused as QmpError).desc).toMatch(/Permission denied/u);
    await closed.stop();

    const socket = path.join(runDir, 'fs1.sock');
    const daemon = await Virtiofsd.start({ sharedDir: share, socket, logFile: path.join(runDir, 'virtiofsd1.log'), user: USER, socketOwner: NOBODY });
    cleanups.push(() => daemon.stop());
    expect(fs.statSync(socket)).toMatchObject({ uid: 65534, gid: 65534 });
    expect(fs.statSync(socket).mode & 0o777).toBe(0o600);
    await vm.hotplug({ kind: 'vhost-user-fs', id: 'fs1', socket, tag: 'share1' });
    // The guest probes the new device a moment after device_add returns: until then the tag is unknown (EINVAL).
    const deadline = Date.now() + 30_000;
    while ((await shell.run('mkdir -p /mnt/s && mount -t virtiofs share1 /mnt/s')).status !== 0) {
      expect(Date.now()).toBeLessThan(deadline);
      await new Promise((r) => setTimeout(r, 200));
    }
    const read = await shell.run("cat /mnt/s/hello.txt && stat -c '%u:%g' /mnt/s/hello.txt");
    expect(read).toEqual({ output: 'hello from the host\n0:0\n', status: 0 });
    expect((await shell.run('echo from-q35 > /mnt/s/q35 && sync')).status).toBe(0);
    expect(fs.readFileSync(path.join(share, 'q35'), 'utf8')).toBe('from-q35\n');
    expect(fs.statSync(path.join(share, 'q35'))).toMatchObject({ uid: BASE, gid: BASE });
    expect(status(daemon.handle.pid)['Uid']!.split(/\s+/u).map(Number)).toEqual([BASE, BASE, BASE, BASE]);

    await vm.shutdown({ graceful: async () => shell.send('umount /mnt/s; poweroff -f') });
    await daemon.waitForExit(AbortSignal.timeout(10_000));
    await daemon.stop();
  });

  it('refuses a root or overflowing range, and reports a share the uid cannot reach', async () => {
    const runDir = makeRunDir();
    cleanups.push(() => fs.rmSync(runDir, { recursive: true, force: true }));
    const logFile = path.join(runDir, 'virtiofsd.log');
    const socket = path.join(runDir, 's.sock');
    const start = (user: unknown, extra: object = {}): Promise<Virtiofsd> =>
      Virtiofsd.start({ sharedDir: runDir, socket, logFile, user: user as { uid: number; gid: number }, ...extra });
    await expect(start({ uid: 0, gid: BASE })).rejects.toMatchObject({ constructor: InvalidArgumentError, field: 'user.uid' });
    await expect(start({ uid: BASE, gid: 0 })).rejects.toMatchObject({ field: 'user.gid' });
    await expect(start({ uid: 2 ** 32 - 10, gid: BASE })).rejects.toMatchObject({ field: 'user.count' });
    await expect(start({ uid: BASE, gid: BASE, count: 0 })).rejects.toMatchObject({ field: 'user.count' });
    await expect(start({ uid: BASE, gid: BASE, shift: 1 })).rejects.toMatchObject({ field: 'user.shift' });
    await expect(start(USER, { socketOwner: { uid: 0, gid: 0 } })).rejects.toMatchObject({ field: 'socketOwner.uid' });
    // sandbox=namespace opens the host's / for reading: refused before any spawn where the uid cannot (a 0711 root).
    if ((fs.statSync('/').mode & 0o004) === 0) {
      await expect(start(USER, { sandbox: 'namespace' })).rejects.toMatchObject({ constructor: InvalidArgumentError, field: 'sandbox', message: expect.stringMatching(/mode 0711|mode 07/u) });
      expect(await mappedTo(BASE)).toEqual([]);
    } else {
      await (await start(USER, { sandbox: 'namespace' })).stop();
    }
    expect(fs.existsSync(socket)).toBe(false);

    // runDir is root's 0700: the unprivileged daemon cannot reach it, and says so; nothing is left.
    const shared = path.join(runDir, 'shared');
    fs.mkdirSync(shared);
    const error = await Virtiofsd.start({ sharedDir: shared, socket, logFile, user: USER, timeoutMs: 5000 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DaemonError);
    expect((error as DaemonError).logTail).toMatch(/Permission denied/u);
    expect(fs.existsSync(socket)).toBe(false);
    expect(await mappedTo(BASE)).toEqual([]);
  });
});
