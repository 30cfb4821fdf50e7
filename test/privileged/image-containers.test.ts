/**
 * Containers from OCI images, for real: a three-layer image (whiteouts across layers, an opaque
 * directory, a user by name, Entrypoint + Cmd, WorkingDir, Env) unpacked into a store of the
 * test's own, its read-only view shared into a VM, and a copy-on-write layer per container in the
 * guest (the agent's overlay over virtio-fs). A second container unpacks nothing; each
 * container's writes are its own; `rm` is refused while a container uses the image; `prune`
 * removes it all. Nothing may be left mounted.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Image } from '../../src/image/image.js';
import { InvalidArgumentError, InvalidStateError } from '../../src/errors.js';
import { Sandbox } from '../../src/sandbox/sandbox.js';
import { mountPoints } from '../../src/state/remove.js';
import { bigFile, DEFAULT_OUTPUT, writeTestLayout } from './helpers/image-build.js';
import { collect, deleteAllAndCheck, makeStateDir, runScript, skipReason, vmpod } from './sandbox/fixture.js';

const exec = promisify(execFile);

describe.skipIf(skipReason)(`containers from OCI images${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  let work: string;
  let store: string;
  let reference: string;
  let sandbox: Sandbox | undefined;

  beforeAll(async () => {
    stateDir = await makeStateDir();
    work = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-imgc-'));
    store = path.join(work, 'store');
    ({ reference } = await writeTestLayout(path.join(work, 'layout')));
  });

  afterAll(async () => {
    try {
      await sandbox?.delete({ force: true });
      await deleteAllAndCheck(stateDir);
      for (const s of [store, path.join(work, 'cli-store')]) await Image.prune({ store: s, stateDir });
      expect((await mountPoints()).filter((m) => m.startsWith(work))).toEqual([]);
    } finally {
      for (const m of (await mountPoints()).filter((p) => p.startsWith(work)).reverse()) await exec('umount', ['-l', m]).catch(() => undefined);
      await fs.rm(work, { recursive: true, force: true });
    }
  });

  it('runs the image as its config says, layers merged as the spec says; a second container unpacks nothing; writes stay per container; rm refused while in use', async () => {
    // One VM for the API tests, whichever runs first (the order is shuffled).
    sandbox ??= await Sandbox.create({ stateDir, memoryMiB: 256 });
    if (sandbox.state !== 'running') await sandbox.start();
    await using image = await Image.open(reference, { store });
    expect(image.platform).toBe('linux/amd64');
    expect(await image.cached()).toBe(false);

    // 1. The image's own process: Entrypoint ++ Cmd, as user "app" (from its /etc/passwd), in WorkingDir, with Env.
    const first = await sandbox.createContainer({ image });
    const out = collect(first.stdout);
    const err = collect(first.stderr);
    await first.start();
    expect((await first.wait()).exitCode).toBe(0);
    expect({ out: (await out).toString(), err: (await err).toString() }).toEqual({ out: DEFAULT_OUTPUT, err: '' });
    expect(image.counters.layersUnpacked).toBe(3);
    // While it exists, its image cannot be removed (the record names it).
    await expect(Image.remove(reference, { store, stateDir })).rejects.toBeInstanceOf(InvalidStateError);
    await expect(Image.remove(reference, { store, stateDir, force: true })).rejects.toBeInstanceOf(InvalidStateError);
    await first.delete();

    const layerStats = await Promise.all((await image.layers()).map((l) => fs.stat(path.join(store, 'layers', l.diffId.slice(7)))));

    // 2. The merged tree: a whiteout of layer 2 hides layer 1's file, the opaque dir shows only layer 2's, layer 3 adds motd; a big file reads whole.
    const big = createHash('sha256').update(bigFile()).digest('hex');
    const tree = await runScript(sandbox, { image, process: { user: { uid: 0, gid: 0 } } }, [
      'test -e /data/gone && echo GONE-VISIBLE',
      'cat /data/keep /data/added',
      'ls /opaque',
      'cat /etc/motd',
      'sha256sum /big | cut -d" " -f1',
      // Writes to its own layer: change a lower file, delete one, make one.
      'echo changed > /data/keep && rm /etc/motd && echo mine > /app/mine && cat /data/keep && test ! -e /etc/motd && echo motd-deleted',
    ].join('; '));
    expect(tree).toEqual({ code: 0, err: '', out: `kept\nadded by layer 2\nnew\nvmpod image test\n${big}\nchanged\nmotd-deleted\n` });
    expect(image.counters.layersUnpacked).toBe(3);

    // 3. Another container (another Image object, as another process would have): nothing unpacked, the first one's writes not seen.
    await using again = await Image.open(reference, { store });
    expect(await again.cached()).toBe(true);
    const third = await runScript(sandbox, { image: again }, 'cat /data/keep /etc/motd; test -e /app/mine && echo MINE-VISIBLE; id -u');
    expect(third).toEqual({ code: 0, err: '', out: 'kept\nvmpod image test\n1000\n' });
    expect(again.counters).toMatchObject({ layersUnpacked: 0, layersReused: 3 });
    const after = await Promise.all((await again.layers()).map((l) => fs.stat(path.join(store, 'layers', l.diffId.slice(7)))));
    expect(after.map((s) => [s.ino, s.mtimeMs])).toEqual(layerStats.map((s) => [s.ino, s.mtimeMs]));
    // The host's view was never written.
    expect(await fs.readFile(path.join(store, 'views', image.chainId.slice(7), 'rootfs/data/keep'), 'utf8')).toBe('kept\n');

    // Sandbox.run takes an image too.
    const ran = await sandbox.run({ image: again, args: ['cat', '/data/added'] });
    expect({ code: ran.exitCode, out: ran.stdout }).toEqual({ code: 0, out: 'added by layer 2\n' });

    // 4. With nothing using it, rm works; its layers go with prune.
    expect(await sandbox.containers()).toEqual([]);
    const removed = await Image.remove(reference, { store, stateDir });
    expect(removed.id).toBe(image.id);
    const pruned = await Image.prune({ store, stateDir });
    expect(pruned.layers.sort()).toEqual((await again.layers()).map((l) => l.diffId).sort());
    expect(await fs.readdir(path.join(store, 'layers'))).toEqual([]);
    expect((await mountPoints()).filter((m) => m.startsWith(store))).toEqual([]);
  });

  it('refuses an image with a bundle, a rootfs or a block rootfs, before anything is made', async () => {
    sandbox ??= await Sandbox.create({ stateDir, memoryMiB: 256 });
    if (sandbox.state !== 'running') await sandbox.start();
    await expect(sandbox.createContainer({ image: reference, rootfs: work })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(sandbox.createContainer({ image: reference, bundle: work })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(sandbox.createContainer({ image: reference, rootfsTransport: 'block' })).rejects.toThrow(/rootfsTransport/u);
    expect(await sandbox.containers()).toEqual([]);
    // An idmapped share cannot carry the overlayfs view: refused before anything is unpacked (the sandbox need not run).
    const idmapped = await Sandbox.create({ stateDir, sharedFsUser: { uid: 100000, gid: 100000 } });
    try {
      const error = await idmapped.createContainer({ image: reference }).then(() => undefined, (e: unknown) => e);
      expect(error).toBeInstanceOf(InvalidArgumentError);
      expect((error as Error).message).toMatch(/sharedFsUser/u);
    } finally {
      await idmapped.delete({ force: true });
    }
  });

  it('vmpod run oci:DIR:TAG runs the image with CMD after its Entrypoint, progress on stderr; vmpod image ls/inspect/rm/prune', async () => {
    // A store of its own (the tests run in any order).
    const cliStore = path.join(work, 'cli-store');
    const saved = process.env['VMPOD_IMAGE_DIR'];
    process.env['VMPOD_IMAGE_DIR'] = cliStore;
    try {
      // CMD replaces the image's Cmd and follows its Entrypoint (["/bin/sh", "-c"]), as with podman run.
      const run = await vmpod(stateDir, ['run', '--rm', '-m', '256', reference, '--', 'cat /etc/motd']);
      expect({ code: run.code, stdout: run.stdout }).toEqual({ code: 0, stdout: 'vmpod image test\n' });
      expect(run.stderr).toMatch(/layer 3\/3 [0-9a-f]{12} unpacked/u);
      const quiet = await vmpod(stateDir, ['run', '--rm', '-q', '-m', '256', reference]);
      expect(quiet).toEqual({ code: 0, stdout: DEFAULT_OUTPUT, stderr: '' });
      const ls = await vmpod(stateDir, ['image', 'ls', '--json']);
      const list = JSON.parse(ls.stdout) as { id: string; references: string[] }[];
      expect(list.map((r) => r.references)).toEqual([[reference]]);
      const inspect = await vmpod(stateDir, ['image', 'inspect', list[0]!.id.slice(7, 19)]);
      expect(inspect.stdout).toContain('user:       "app"');
      expect((await vmpod(stateDir, ['image', 'rm', reference])).code).toBe(0);
      const prune = await vmpod(stateDir, ['image', 'prune', '--json']);
      expect(JSON.parse(prune.stdout)).toMatchObject({ images: [], layers: expect.arrayContaining([]) });
      expect((JSON.parse(prune.stdout) as { layers: string[] }).layers).toHaveLength(3);
    } finally {
      if (saved === undefined) delete process.env['VMPOD_IMAGE_DIR'];
      else process.env['VMPOD_IMAGE_DIR'] = saved;
    }
  });
});
