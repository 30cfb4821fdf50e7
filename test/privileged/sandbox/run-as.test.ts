/**
 * A sandbox whose hypervisor drops root (`runAs`): QEMU runs as an unprivileged user once it
 * started, the guest boots and runs containers, a block volume is hot plugged (the host opens the
 * image and passes the fd: QEMU could not open a root-only file itself), and stop and delete
 * leave nothing.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { Volume } from '../../../src/volume/volume.js';
import { expectNothingLeft, forceCleanup, makeStateDir, runScript, skipReason } from './fixture.js';

const exec = promisify(execFile);
const NOBODY = { uid: 65534, gid: 65534 };

/** uid and gid lines of /proc/PID/status: real, effective, saved, filesystem. */
async function ids(pid: number): Promise<{ uid: number[]; gid: number[] }> {
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): number[] => (status.match(new RegExp(`^${name}:\\s+(.*)$`, 'mu'))?.[1] ?? '').split(/\s+/u).map(Number);
  return { uid: field('Uid'), gid: field('Gid') };
}

describe.skipIf(skipReason)(`a sandbox whose QEMU runs unprivileged${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  let sandbox: Sandbox;

  beforeAll(async () => {
    stateDir = await makeStateDir();
  });
  afterAll(async () => {
    await forceCleanup(stateDir);
  });

  it('boots, runs containers, hot plugs a root-only image, and cleans up', async () => {
    sandbox = await Sandbox.create({ stateDir, runAs: NOBODY });
    await sandbox.start();
    // Every id of QEMU is the user's: it cannot setuid back to root.
    expect(await ids(sandbox.pid!)).toEqual({ uid: [65534, 65534, 65534, 65534], gid: [65534, 65534, 65534, 65534] });
    const out = await runScript(sandbox, {}, 'echo hello from $(uname -r)');
    expect(out).toMatchObject({ code: 0, out: expect.stringMatching(/^hello from .*cloud-amd64\n$/u) });

    // An image only root may read: QEMU (nobody) gets it as an fd from the host.
    const image = path.join(stateDir, 'data.img');
    const content = path.join(stateDir, 'content');
    await fs.mkdir(content);
    await fs.writeFile(path.join(content, 'marker'), 'from the host\n');
    await exec('mkfs.ext4', ['-q', '-F', '-d', content, image, '8M']);
    await fs.chmod(image, 0o600);
    const volume = await sandbox.addVolume(Volume.block('data', image));
    const read = await runScript(sandbox, { volumes: [{ volume: 'data', destination: '/data' }] }, 'cat /data/marker && echo written > /data/new');
    expect(read).toMatchObject({ code: 0, out: 'from the host\n' });
    expect(volume.guestPath).toBe('/run/vmpod/volumes/data');
    await sandbox.removeVolume('data');

    await sandbox.stop();
    await sandbox.delete();
    await expectNothingLeft(stateDir);
  });
});
