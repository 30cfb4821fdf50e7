/**
 * The shim's rootfs mounts for real: containerd's overlay (two lower layers and an upper) and a
 * read-only bind mounted on a bundle's rootfs, what the guest of a vmpod sandbox then sees through
 * the library (a file from each layer, a write that lands in upperdir), the undo of a failing
 * mount, and the unmount (a busy one detached). Everything lives under a state directory of the
 * test (prefix vmpod-st-) and is removed even when a test fails.
 */
import fs from 'node:fs/promises';
import fsSync from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SystemError } from '../../src/errors.js';
import { Sandbox } from '../../src/sandbox/sandbox.js';
import type { Mount } from '../../src/shim/proto/index.js';
import { mountRootfs, unmountRootfs } from '../../src/shim/rootfs.js';
import { GrpcCode, TtrpcError } from '../../src/shim/ttrpc/status.js';
import { mountPoints } from '../../src/state/remove.js';
import { busyboxRootfs, collect, expectNothingLeft, forceCleanup, makeStateDir, skipReason } from './sandbox/fixture.js';

/** The filesystem type mounted exactly at `target`, from /proc/self/mountinfo (the last one stacked). */
function mountedType(target: string): string | undefined {
  let type: string | undefined;
  for (const line of fsSync.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const fields = line.split(' ');
    const sep = fields.indexOf('-');
    if (sep > 0 && fields[4] === target) type = fields[sep + 1];
  }
  return type;
}

describe.skipIf(skipReason)(`shim rootfs mounts${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  let layers: { lower1: string; lower2: string };

  beforeAll(async () => {
    stateDir = await makeStateDir();
    const dir = path.join(stateDir, 'layers');
    layers = { lower1: path.join(dir, 'lower1'), lower2: path.join(dir, 'lower2') };
    // lower1: the base image (busybox) and a file; lower2: a file of its own and one that hides lower1's.
    await busyboxRootfs(layers.lower1);
    layers.lower1 = path.join(layers.lower1, 'rootfs');
    await fs.writeFile(path.join(layers.lower1, 'layer1.txt'), 'from layer 1\n');
    await fs.writeFile(path.join(layers.lower1, 'shadowed.txt'), 'layer 1 (hidden)\n');
    await fs.mkdir(layers.lower2, { recursive: true });
    await fs.writeFile(path.join(layers.lower2, 'layer2.txt'), 'from layer 2\n');
    await fs.writeFile(path.join(layers.lower2, 'shadowed.txt'), 'layer 2 on top\n');
  });

  afterAll(async () => {
    try {
      for (const point of (await mountPoints()).filter((m) => m.startsWith(stateDir)).reverse()) {
        await unmountRootfs(path.dirname(point)).catch(() => undefined);
      }
      await expectNothingLeft(stateDir);
    } finally {
      await forceCleanup(stateDir);
    }
  });

  /** containerd's overlay of the two lower layers, with an upper and a work dir of its own (tests run in any order). */
  async function overlay(name: string): Promise<{ mount: Mount; upper: string }> {
    const upper = path.join(stateDir, 'layers', `${name}-upper`);
    const work = path.join(stateDir, 'layers', `${name}-work`);
    await fs.mkdir(upper);
    await fs.mkdir(work);
    return {
      mount: { type: 'overlay', source: 'overlay', target: '', options: ['index=off', `workdir=${work}`, `upperdir=${upper}`, `lowerdir=${layers.lower2}:${layers.lower1}`] },
      upper,
    };
  }

  async function newBundle(name: string, args?: string[]): Promise<string> {
    const bundle = path.join(stateDir, name);
    await fs.mkdir(bundle);
    if (args) {
      await fs.writeFile(
        path.join(bundle, 'config.json'),
        JSON.stringify({
          ociVersion: '1.0.2',
          process: { args, cwd: '/', env: ['PATH=/bin'] },
          root: { path: 'rootfs', readonly: false },
          mounts: [{ destination: '/proc', type: 'proc', source: 'proc' }],
        }),
      );
    }
    return bundle;
  }

  it('mounts the overlay on BUNDLE/rootfs (made 0711), refuses a second time, unmounts idempotently', async () => {
    const bundle = await newBundle('host-only');
    const rootfs = path.join(bundle, 'rootfs');
    const { mount } = await overlay('host-only');
    const t0 = process.hrtime.bigint();
    await mountRootfs(bundle, [mount]);
    const t1 = process.hrtime.bigint();
    expect(mountedType(rootfs)).toBe('overlay');
    expect(await fs.readFile(path.join(rootfs, 'layer1.txt'), 'utf8')).toBe('from layer 1\n');
    expect(await fs.readFile(path.join(rootfs, 'layer2.txt'), 'utf8')).toBe('from layer 2\n');
    expect(await fs.readFile(path.join(rootfs, 'shadowed.txt'), 'utf8')).toBe('layer 2 on top\n');

    const again = await mountRootfs(bundle, [mount]).catch((e: unknown) => e);
    expect(again).toBeInstanceOf(TtrpcError);
    expect((again as TtrpcError).grpcCode).toBe(GrpcCode.FAILED_PRECONDITION);

    const t2 = process.hrtime.bigint();
    await unmountRootfs(bundle);
    const t3 = process.hrtime.bigint();
    console.log(`overlay of 2 layers: mount ${(Number(t1 - t0) / 1e6).toFixed(2)} ms, unmount ${(Number(t3 - t2) / 1e6).toFixed(2)} ms`);
    expect(mountedType(rootfs)).toBeUndefined();
    expect(await fs.readdir(rootfs)).toEqual([]);
    await unmountRootfs(bundle);

    // A rootfs made here has mode 0711 (seen with the overlay unmounted).
    expect((await fs.stat(rootfs)).mode & 0o777).toBe(0o711);
  });

  it('a read-only bind, and a failing mount undoing the ones before it', async () => {
    const bundle = await newBundle('bind');
    const rootfs = path.join(bundle, 'rootfs');
    await mountRootfs(bundle, [{ type: 'bind', source: layers.lower2, target: '', options: ['rbind', 'ro'] }]);
    expect(await fs.readFile(path.join(rootfs, 'layer2.txt'), 'utf8')).toBe('from layer 2\n');
    await expect(fs.writeFile(path.join(rootfs, 'new.txt'), 'x')).rejects.toMatchObject({ code: 'EROFS' });
    await unmountRootfs(bundle);
    expect(mountedType(rootfs)).toBeUndefined();

    // Second mount's lower layer does not exist: the kernel refuses it, the first is undone.
    const failing = await mountRootfs(bundle, [
      { type: 'bind', source: layers.lower2, target: '', options: ['rbind'] },
      { type: 'overlay', source: 'overlay', target: '', options: [`lowerdir=${path.join(stateDir, 'no-such-layer')}:${layers.lower1}`] },
    ]).catch((e: unknown) => e);
    expect(failing).toBeInstanceOf(SystemError);
    expect((failing as SystemError).errnoName).toBe('ENOENT');
    expect(mountedType(rootfs)).toBeUndefined();
  });

  it('a busy rootfs is detached, not left mounted', async () => {
    const bundle = await newBundle('busy');
    const rootfs = path.join(bundle, 'rootfs');
    await mountRootfs(bundle, [{ type: 'bind', source: layers.lower2, target: '', options: ['rbind'] }]);
    // A process with its working directory in the mount makes umount(2) say EBUSY.
    const { spawn } = await import('node:child_process');
    const holder = spawn('sleep', ['60'], { cwd: rootfs, stdio: 'ignore' });
    try {
      await new Promise((resolve) => holder.once('spawn', resolve));
      await unmountRootfs(bundle);
      expect(mountedType(rootfs)).toBeUndefined();
    } finally {
      holder.kill('SIGKILL');
    }
  });

  it('the guest sees the layers through the library, and its write lands in upperdir', async () => {
    const script = 'cat /layer1.txt /layer2.txt /shadowed.txt; echo written-in-guest > /written.txt; rm /layer1.txt; ls /';
    const bundle = await newBundle('vm', ['sh', '-c', script]);
    const { mount, upper } = await overlay('vm');
    await mountRootfs(bundle, [mount]);
    const sandbox = await Sandbox.create({ stateDir, cpus: 1, memoryMiB: 256 });
    try {
      await sandbox.start();
      const c = await sandbox.createContainer({ bundle });
      const out = collect(c.stdout);
      const err = collect(c.stderr);
      await c.start();
      const status = await c.wait();
      expect((await err).toString()).toBe('');
      expect(status.exitCode).toBe(0);
      const lines = (await out).toString().split('\n');
      expect(lines.slice(0, 3)).toEqual(['from layer 1', 'from layer 2', 'layer 2 on top']);
      expect(lines).toContain('written.txt');
      expect(lines).not.toContain('layer1.txt');
      await c.delete();
    } finally {
      await sandbox.delete({ force: true });
    }
    // The write and the deletion are in upperdir (a whiteout), the lower layers untouched.
    expect(await fs.readFile(path.join(upper, 'written.txt'), 'utf8')).toBe('written-in-guest\n');
    const whiteout = await fs.stat(path.join(upper, 'layer1.txt'));
    expect(whiteout.isCharacterDevice() && whiteout.rdev === 0).toBe(true);
    expect(await fs.readFile(path.join(layers.lower1, 'layer1.txt'), 'utf8')).toBe('from layer 1\n');
    await unmountRootfs(bundle);
    expect(mountedType(path.join(bundle, 'rootfs'))).toBeUndefined();
  });
});
