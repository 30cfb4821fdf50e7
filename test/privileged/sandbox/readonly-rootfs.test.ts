/**
 * A bundle whose root is read-only (`runc spec` writes `root.readonly: true`) with a volume
 * mounted where its rootfs has no directory: runc makes the mount point in the rootfs before it
 * turns it read-only, so the bundle works with runc; vmpod shares such a rootfs read-only, so
 * the guest cannot make it (CreateContainer failed: mkdir ... Read-only file system). The host
 * makes it now, never through a symlink: a destination through a symlink that points out of the
 * rootfs makes nothing outside it. The same for the spec's own mounts (a rootfs without /proc or
 * /sys; a bind of a host file, whose point is a file) and, in a sandbox with a network, the /etc
 * files the agent binds over (resolv.conf, hosts, hostname): a `runc spec` bundle in a network
 * failed with "Read-only file system" before.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { Volume } from '../../../src/volume/volume.js';
import { expectNothingLeft, forceCleanup, makeStateDir, runcSpecBundle, runScript, skipReason } from './fixture.js';

describe.skipIf(skipReason)(`a read-only rootfs with volume mount points it lacks${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  let bundle: string;
  let outside: string;
  let sandbox: Sandbox;

  beforeAll(async () => {
    stateDir = await makeStateDir();
    bundle = await runcSpecBundle(path.join(stateDir, 'bundle'), (spec) => {
      spec.process.terminal = false;
    });
    outside = await fs.mkdtemp(path.join(stateDir, 'outside-'));
    await fs.symlink(outside, path.join(bundle, 'rootfs', 'escape'));
    // network: {} gives the guest a network config, so the agent binds /etc/resolv.conf, hosts and hostname.
    sandbox = await Sandbox.create({ stateDir, id: 'rorootfs', memoryMiB: 256, network: {}, volumes: [Volume.tmpfs('scratch', { sizeMiB: 8 })] });
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

  it('gets the mount point made on the host, and the rootfs stays read-only in the container', async () => {
    expect(JSON.parse(await fs.readFile(path.join(bundle, 'config.json'), 'utf8')).root.readonly).toBe(true);
    await expect(fs.stat(path.join(bundle, 'rootfs', 'data'))).rejects.toMatchObject({ code: 'ENOENT' });
    const r = await runScript(sandbox, { bundle, volumes: [{ volume: 'scratch', destination: '/data/scratch' }] }, 'echo hi > /data/scratch/f && cat /data/scratch/f && if touch /not-here 2>/dev/null; then echo writable; else echo read-only; fi');
    expect(r).toEqual({ out: 'hi\nread-only\n', err: '', code: 0 });
    const made = await fs.stat(path.join(bundle, 'rootfs', 'data', 'scratch'));
    expect(made.isDirectory()).toBe(true);
    expect(made.mode & 0o777).toBe(0o755);
    // A second container of the same bundle finds it there.
    expect((await runScript(sandbox, { bundle, volumes: [{ volume: 'scratch', destination: '/data/scratch' }] }, 'cat /data/scratch/f')).out).toBe('hi\n');
  });

  it('gets the spec\'s own mount points and the network files made, a file bind\'s point as a file', async () => {
    const bare = await runcSpecBundle(path.join(stateDir, 'bare'), (spec) => {
      spec.process.terminal = false;
      spec.mounts.push({ destination: '/etc/extra.conf', type: 'bind', source: path.join(stateDir, 'extra.conf'), options: ['rbind', 'ro'] });
    });
    await fs.writeFile(path.join(stateDir, 'extra.conf'), 'extra\n');
    for (const dir of ['proc', 'sys']) await fs.rm(path.join(bare, 'rootfs', dir), { recursive: true });
    const r = await runScript(sandbox, { bundle: bare }, 'cat /etc/extra.conf; test -r /proc/self/status && echo proc; test -d /sys/kernel && echo sys; test -f /etc/resolv.conf && echo resolv; cat /etc/hostname');
    expect(r).toEqual({ out: 'extra\nproc\nsys\nresolv\nrunc\n', err: '', code: 0 });
    for (const [name, isFile] of [['proc', false], ['sys', false], ['etc/extra.conf', true], ['etc/resolv.conf', true], ['etc/hosts', true], ['etc/hostname', true]] as const) {
      const made = await fs.lstat(path.join(bare, 'rootfs', name));
      expect({ name, file: made.isFile(), dir: made.isDirectory(), size: made.size > 0 && isFile }).toEqual({ name, file: isFile, dir: !isFile, size: false });
    }
  });

  it('makes nothing through a symlink of the rootfs that points out of it', async () => {
    await expect(runScript(sandbox, { bundle, volumes: [{ volume: 'scratch', destination: '/escape/x' }] }, 'true')).rejects.toThrow();
    expect(await fs.readdir(outside)).toEqual([]);
  });
});
