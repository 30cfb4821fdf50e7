/**
 * `guest.rootfsImage`: a user's ext4 image (raw on q35, qcow2 on microvm) in place of the
 * builtin rootfs. Containers without a bundle run on it, copy-on-write each (the image is
 * never written), and bad images fail `start()` with typed errors, leaving nothing behind.
 */
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { InvalidArgumentError, NotFoundError } from '../../../src/errors.js';
import { busyboxRootfs, expectNothingLeft, forceCleanup, makeStateDir, skipReason, runScript } from './fixture.js';

const exec = promisify(execFile);

async function sha256(file: string): Promise<string> {
  return createHash('sha256').update(await fs.readFile(file)).digest('hex');
}

async function run(sandbox: Sandbox, script: string): Promise<{ code: number; out: string }> {
  const { code, out } = await runScript(sandbox, {}, script);
  return { code, out };
}

describe.skipIf(skipReason)(`a rootfs image in place of the builtin rootfs${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  let work: string;
  let raw: string;
  let qcow2: string;
  let sandbox: Sandbox | undefined;

  beforeAll(async () => {
    stateDir = await makeStateDir();
    work = await fs.mkdtemp(path.join(stateDir, 'work-'));
    const rootfs = await busyboxRootfs(path.join(work, 'tree'));
    await fs.writeFile(path.join(rootfs, 'etc/vmpod-image'), 'from the image\n');
    raw = path.join(work, 'rootfs.ext4');
    await exec('mkfs.ext4', ['-q', '-F', '-E', 'root_owner=0:0', '-d', rootfs, raw, '32M']);
    qcow2 = path.join(work, 'rootfs.qcow2');
    await exec('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2]);
  });

  afterEach(async () => {
    await sandbox?.delete({ force: true });
    sandbox = undefined;
  });

  afterAll(async () => {
    try {
      await fs.rm(work, { recursive: true, force: true });
      await expectNothingLeft(stateDir);
    } finally {
      await forceCleanup(stateDir);
    }
  });

  for (const [machine, format] of [['q35', 'raw'], ['microvm', 'qcow2']] as const) {
    it(`${machine}, ${format}: containers run on the image, each with its own writes; the image is not written`, async () => {
      const image = format === 'raw' ? raw : qcow2;
      const before = await sha256(image);
      sandbox = await Sandbox.create({ stateDir, machine, guest: { rootfsImage: image } });
      await sandbox.start();
      const first = await run(sandbox, 'cat /etc/vmpod-image; echo changed > /etc/vmpod-image; cat /etc/vmpod-image');
      expect(first).toEqual({ code: 0, out: 'from the image\nchanged\n' });
      // The next container starts from the image again: the change was the first one's own.
      expect(await run(sandbox, 'cat /etc/vmpod-image')).toEqual({ code: 0, out: 'from the image\n' });
      const info = (await sandbox.containers()).length;
      expect(info).toBe(0);
      await sandbox.stop();
      expect(await sha256(image)).toBe(before);
    });
  }

  it('rejects a relative path, a missing image and a directory at create, and an image gone by start, leaving nothing', async () => {
    await expect(Sandbox.create({ stateDir, guest: { rootfsImage: 'rootfs.ext4' } })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(Sandbox.create({ stateDir, guest: { rootfsImage: path.join(work, 'missing.ext4') } })).rejects.toBeInstanceOf(NotFoundError);
    await expect(Sandbox.create({ stateDir, guest: { rootfsImage: work } })).rejects.toThrow(/^guest.rootfsImage: .* is neither a regular file nor a block device/u);
    expect(await fs.readdir(path.join(stateDir, 'sandboxes')).catch(() => [])).toEqual([]);
    const doomed = path.join(work, 'doomed.ext4');
    await fs.copyFile(raw, doomed);
    sandbox = await Sandbox.create({ stateDir, guest: { rootfsImage: doomed } });
    await fs.rm(doomed);
    const error = await sandbox.start().then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(NotFoundError);
    expect((error as Error).message).toContain('guest.rootfsImage');
    await sandbox.delete({ force: true });
    sandbox = undefined;
  });
});
