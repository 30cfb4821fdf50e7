/**
 * Faults of the host under a sandbox, each ending in a documented state with a typed error and
 * leaving nothing behind: the state directory full (ENOSPC: create, start and delete refused
 * with SystemError, no partial record, delete works once there is room), the sandbox's shared
 * tree full (a container refused with a typed error, no half-made container or bind; the next
 * one works once there is room), and virtiofsd killed under a running container (QEMU and the
 * agent live on, nothing reports it; delete({ force }) ends the VM and removes everything).
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Sandbox, type StopInfo } from '../../../src/sandbox/sandbox.js';
import { SystemError, VmpodError } from '../../../src/errors.js';
import { mountPoints } from '../../../src/state/remove.js';
import { busyboxRootfs, expectNothingLeft, forceCleanup, makeStateDir, processesMentioning, runScript, skipReason } from './fixture.js';

const exec = promisify(execFile);

/** Fills the filesystem of `dir` with one file, to the last byte it takes. */
async function fill(file: string): Promise<void> {
  const handle = await fs.open(file, 'w');
  try {
    const chunk = Buffer.alloc(64 * 1024, 1);
    for (let size = chunk.length; size > 0; ) {
      try {
        await handle.write(chunk, 0, size);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
        size >>= 1; // the last blocks
      }
    }
  } finally {
    await handle.close();
  }
}

/** Pids of the processes of `dir` whose command line names `program`. */
async function processesOf(dir: string, program: string): Promise<number[]> {
  const pids: number[] = [];
  for (const pid of await processesMentioning(dir)) {
    const argv0 = (await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0')[0] ?? '';
    if (path.basename(argv0) === program) pids.push(pid);
  }
  return pids;
}

describe.skipIf(skipReason)(`host faults under a sandbox${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;

  beforeEach(async () => {
    stateDir = await makeStateDir();
  });

  afterEach(async () => {
    try {
      for (const info of await Sandbox.list({ stateDir }).catch(() => [])) await Sandbox.remove(info.id, { force: true, stateDir });
      await expectNothingLeft(stateDir);
    } finally {
      await forceCleanup(stateDir);
    }
  });

  it('a full state directory: create, start and delete fail with SystemError ENOSPC, no partial record; delete works once there is room', async () => {
    // The state root on a 2 MiB tmpfs of its own (under stateDir, so the leftover check sees it).
    const root = path.join(stateDir, 'root');
    await fs.mkdir(root);
    await exec('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=0700', 'vmpod-vt-enospc', root]);
    try {
      const filler = path.join(root, 'filler');
      await fill(filler);
      const created = await Sandbox.create({ stateDir: root, id: 'full' }).catch((e: unknown) => e);
      expect(created).toBeInstanceOf(SystemError);
      expect(created).toMatchObject({ code: 'ERR_VMPOD_SYSTEM', errnoName: 'ENOSPC' });
      expect((created as Error).message).toContain(`the state directory ${root} is full`);
      expect(await fs.readdir(path.join(root, 'sandboxes'))).toEqual([]); // no partial record
      expect(await Sandbox.list({ stateDir: root })).toEqual([]);

      // Room for the record only: start cannot record 'starting', so nothing of a boot is made.
      await fs.rm(filler);
      const sandbox = await Sandbox.create({ stateDir: root, id: 'full' });
      await fill(filler);
      const started = await sandbox.start().catch((e: unknown) => e);
      expect(started).toMatchObject({ code: 'ERR_VMPOD_SYSTEM', errnoName: 'ENOSPC' });
      expect(started).toBeInstanceOf(SystemError);
      expect((await Sandbox.list({ stateDir: root })).map((s) => [s.id, s.state])).toEqual([['full', 'created']]);
      expect(await processesMentioning(root)).toEqual([]);
      expect((await mountPoints()).filter((m) => m.startsWith(`${root}/`))).toEqual([]);
      expect((await fs.readdir(path.join(root, 'sandboxes', 'full'))).sort()).toEqual(['lock', 'state.json']);

      // Delete records 'deleting' first: refused too, typed, the record as it was.
      const deleted = await Sandbox.remove('full', { stateDir: root }).catch((e: unknown) => e);
      expect(deleted).toBeInstanceOf(SystemError);
      expect(deleted).toMatchObject({ errnoName: 'ENOSPC' });
      expect((await Sandbox.list({ stateDir: root })).map((s) => [s.id, s.state])).toEqual([['full', 'created']]);
      await fs.rm(filler);
      expect(await Sandbox.remove('full', { stateDir: root })).toEqual([]);
      expect(await fs.readdir(path.join(root, 'sandboxes'))).toEqual([]);
    } finally {
      await exec('umount', [root]);
    }
  });

  it('a full shared tree: a container is refused with a typed error, nothing half-made; the next one works once there is room', async () => {
    const sandbox = await Sandbox.create({ stateDir, id: 'treefull' });
    await sandbox.start();
    const rootfs = await busyboxRootfs(path.join(stateDir, 'bundle'));
    // The share is a small tmpfs (1 MiB, 16384 inodes): the host fills its inodes, as a guest
    // writing through a read-write share could.
    const share = path.join(sandbox.dir, 'share');
    expect((await mountPoints()).includes(share)).toBe(true);
    const filler = path.join(share, 'vt-filler');
    await fs.mkdir(filler);
    let made = 0;
    for (;; made++) {
      const error = await fs.mkdir(path.join(filler, `d${made}`)).then(() => undefined, (e: unknown) => e as NodeJS.ErrnoException);
      if (error) {
        expect(error.code).toBe('ENOSPC');
        break;
      }
    }
    expect(made).toBeGreaterThan(1000);
    const mountsBefore = await mountPoints();
    const recordBefore = (await sandbox.record()).containers;
    const refused = await sandbox.createContainer({ id: 'c1', rootfs, process: { args: ['true'] } }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(VmpodError);
    expect(refused).toMatchObject({ errnoName: 'ENOSPC' });
    expect(await sandbox.containers()).toEqual([]);
    expect((await sandbox.record()).containers).toEqual(recordBefore);
    expect(await mountPoints()).toEqual(mountsBefore);
    await fs.rm(filler, { recursive: true });
    expect(await runScript(sandbox, { id: 'c1', rootfs }, 'echo room again')).toEqual({ out: 'room again\n', err: '', code: 0 });
    await sandbox.delete({ force: true });
  });

  it('virtiofsd killed under a running container: the agent still answers, delete({ force }) ends the VM and removes everything; wait and output fail typed', async () => {
    const sandbox = await Sandbox.create({ stateDir, id: 'vfsdead' });
    const stopped: StopInfo[] = [];
    sandbox.on('stopped', (info) => stopped.push(info));
    await sandbox.start();
    const rootfs = await busyboxRootfs(path.join(stateDir, 'bundle'));
    const c = await sandbox.createContainer({ rootfs, process: { args: ['sh', '-c', 'while ls /bin/busybox; do sleep 0.2; done'] } });
    let seen = '';
    c.stdout!.on('data', (d: Buffer) => (seen += d));
    const outEnd = new Promise<unknown>((resolve) => {
      c.stdout!.on('error', resolve);
      c.stdout!.on('end', () => resolve(undefined));
    });
    await c.start();
    const waited = c.wait().then(() => undefined, (e: unknown) => e);
    // The container reads its rootfs through the share.
    for (const deadline = Date.now() + 60_000; !seen.includes('/bin/busybox\n'); ) {
      if (Date.now() > deadline) throw new Error('the container never read its rootfs');
      await new Promise((r) => setTimeout(r, 50));
    }
    const daemons = await processesOf(stateDir, 'virtiofsd');
    const [qemu] = await processesOf(stateDir, 'qemu-system-x86_64');
    expect(daemons.length).toBeGreaterThan(0);
    expect(qemu).toBeGreaterThan(0);
    for (const pid of daemons) process.kill(pid, 'SIGKILL');
    // QEMU outlives its vhost-user-fs backend, and so does the agent: it still answers (the
    // container's reads of the share hang in the guest). Nothing watches virtiofsd after start.
    const listed = await sandbox.containers({ signal: AbortSignal.timeout(30_000) });
    expect(listed.map((l) => [l.id, l.status])).toEqual([[c.id, 'running']]);
    // delete({ force }) stops it: the guest cannot power off in time, QEMU is told to quit.
    await sandbox.delete({ force: true });
    expect(stopped).toEqual([{ reason: 'requested', detail: expect.stringMatching(/^stop: the guest did not power off in time, the hypervisor was (told to quit|killed)$/u) }]);
    expect(await waited).toBeInstanceOf(VmpodError);
    expect(await outEnd).toBeInstanceOf(VmpodError);
    expect(await Sandbox.list({ stateDir })).toEqual([]);
    // afterEach: no QEMU, virtiofsd, mount or folder left.
  });
});
