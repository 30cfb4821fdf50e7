/**
 * The guest's caching of the shared filesystem (`sharedFsCache`): the mode reaches virtiofsd
 * (`-o cache=MODE`), containers run from a rootfs on the share in each mode, and with `none`
 * a file the host rewrites is seen at once by a running container.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import type { SharedFsCache } from '../../../src/sandbox/config.js';
import { busyboxRootfs, collect, expectNothingLeft, forceCleanup, makeStateDir, processesMentioning, skipReason } from './fixture.js';

async function virtiofsdArgs(sandboxDir: string): Promise<string[]> {
  for (const pid of await processesMentioning(sandboxDir)) {
    const args = (await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
    if (args[0]?.endsWith('virtiofsd')) return args;
  }
  return [];
}

describe.skipIf(skipReason)(`shared filesystem cache modes${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  let sandbox: Sandbox | undefined;

  beforeEach(async () => {
    stateDir = await makeStateDir();
  });

  afterEach(async () => {
    try {
      await sandbox?.delete({ force: true });
      sandbox = undefined;
      await expectNothingLeft(stateDir);
    } finally {
      await forceCleanup(stateDir);
    }
  });

  async function runIn(mode: SharedFsCache): Promise<{ rootfs: string; container: Awaited<ReturnType<Sandbox['createContainer']>> }> {
    const rootfs = await busyboxRootfs(await fs.mkdtemp(path.join(stateDir, 'work-')));
    await fs.writeFile(path.join(rootfs, 'etc/motd'), 'first\n');
    sandbox = await Sandbox.create({ stateDir, sharedFsCache: mode });
    await sandbox.start();
    const args = await virtiofsdArgs(path.join(stateDir, 'sandboxes', sandbox.id));
    expect(args).toContain(`cache=${mode}`);
    const container = await sandbox.createContainer({ rootfs, process: { args: ['sh', '-c', 'cat /etc/motd; read line; cat /etc/motd'] }, stdio: { stdin: true } });
    return { rootfs, container };
  }

  for (const mode of ['always', 'none'] as const) {
    it(`"${mode}": virtiofsd gets cache=${mode}, a container runs from the share and execs into it`, async () => {
      const { container } = await runIn(mode);
      const out = collect(container.stdout);
      await container.start();
      for (let i = 0; i < 2; i++) {
        const exec = await container.exec({ args: ['cat', '/etc/motd'] });
        const execOut = collect(exec.stdout);
        expect((await exec.wait()).exitCode).toBe(0);
        expect((await execOut).toString()).toBe('first\n');
      }
      container.stdin?.end('go\n');
      expect((await container.wait()).exitCode).toBe(0);
      expect((await out).toString()).toBe('first\nfirst\n');
    });
  }

  it('"none": a file the host rewrites in place is read anew by the running container', async () => {
    const { rootfs, container } = await runIn('none');
    let out = '';
    container.stdout!.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
    const ended = new Promise((resolve) => container.stdout!.once('end', resolve));
    await container.start();
    // The init has read the file once; then the host changes it (same inode, same size).
    for (const deadline = Date.now() + 60_000; out !== 'first\n'; ) {
      expect(Date.now()).toBeLessThan(deadline);
      await new Promise((r) => setTimeout(r, 50));
    }
    await fs.writeFile(path.join(rootfs, 'etc/motd'), 'other\n');
    container.stdin!.end('go\n');
    expect((await container.wait()).exitCode).toBe(0);
    await ended;
    expect(out).toBe('first\nother\n');
  });
});
