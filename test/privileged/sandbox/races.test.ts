/**
 * Several processes at one sandbox, on real VMs: a delete while another process is starting it,
 * a stop and start again while another process is attached, the same container id created from
 * two processes at once. Each ends with one consistent outcome and nothing left behind.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { isAlive } from '../../../src/host/process.js';
import { busyboxRootfs, collect, deleteAllAndCheck, makeStateDir, nodeScript, skipReason } from './fixture.js';

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe.skipIf(skipReason)(`processes racing at one sandbox${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;

  beforeEach(async () => {
    stateDir = await makeStateDir();
  });
  afterEach(() => deleteAllAndCheck(stateDir));

  it('a delete from another process while this one starts the sandbox wins, and leaves nothing', async () => {
    const sandbox = await Sandbox.create({ stateDir, id: 'race-start' });
    const starting = sandbox.start().then(
      () => 'started',
      (e: Error) => e,
    );
    // Once QEMU exists (the record has its pid), the boot waits for the guest without the lock.
    const record = await waitFor('the VM in the record', async () => {
      const r = await sandbox.record().catch(() => undefined);
      return r?.state === 'starting' && r.boot?.vm ? r : undefined;
    });
    const deleter = nodeScript(stateDir, `await vmpod.Sandbox.remove('race-start', { stateDir: ${JSON.stringify(stateDir)}, force: true }); console.log('deleted');`);
    const deleted = await deleter.result;
    expect(deleted, deleted.stderr).toMatchObject({ code: 0, stdout: 'deleted\n' });
    const outcome = await starting;
    expect(outcome).toBeInstanceOf(Error); // its boot was ended under it
    expect(isAlive(record.boot!.vm!)).toBe(false);
    expect(await Sandbox.list({ stateDir })).toEqual([]);
  });

  it('an attached process does not kill the VM that another process started again', async () => {
    const sandbox = await Sandbox.create({ stateDir, id: 'race-restart' });
    await sandbox.start();
    const firstPid = sandbox.pid!;
    // A second process attaches and records the events it hears.
    const watcher = nodeScript(
      stateDir,
      `const sandbox = await vmpod.Sandbox.attach('race-restart', { stateDir: ${JSON.stringify(stateDir)} });
       const events = [];
       sandbox.on('stopped', (info) => events.push(info.reason));
       await sandbox.containers();        // it talks to the agent of the first boot
       console.log('attached');
       await new Promise((r) => setTimeout(r, 8000));
       console.log(JSON.stringify({ events, state: (await sandbox.record()).state }));
       sandbox.detach();`,
    );
    await waitFor('the watcher to attach', async () => (watcher.output().includes('attached') ? true : undefined));
    await sandbox.stop();
    await sandbox.start();
    const secondPid = sandbox.pid!;
    expect(secondPid).not.toBe(firstPid);
    const seen = await watcher.result;
    expect(seen.code).toBe(0);
    expect(JSON.parse(seen.stdout.trim().split('\n').pop()!)).toEqual({ events: ['requested'], state: 'running' });
    // The new VM lives and serves containers.
    expect(isAlive({ pid: secondPid, startTime: (await sandbox.record()).boot!.vm!.startTime })).toBe(true);
    const c = await sandbox.createContainer({ process: { args: ['echo', 'still here'] } });
    const out = collect(c.stdout);
    await c.start();
    expect((await c.wait()).exitCode).toBe(0);
    expect((await out).toString()).toBe('still here\n');
    await c.delete();
    await sandbox.delete({ force: true });
  });

  it('one container id from two processes at once: one gets it, the other is refused and touches nothing', async () => {
    const sandbox = await Sandbox.create({ stateDir, id: 'race-id' });
    await sandbox.start();
    const bundle = path.join(stateDir, 'bundle');
    await busyboxRootfs(bundle);
    await fs.writeFile(
      path.join(bundle, 'config.json'),
      JSON.stringify({
        ociVersion: '1.0.2',
        process: { args: ['sleep', '300'], cwd: '/', env: ['PATH=/bin'] },
        root: { path: 'rootfs' },
        mounts: [
          { destination: '/proc', type: 'proc', source: 'proc' },
          { destination: '/data', type: 'bind', source: stateDir, options: ['rbind', 'ro'] },
        ],
        linux: { namespaces: [{ type: 'pid' }, { type: 'mount' }] },
      }),
    );
    const create = (): ReturnType<typeof nodeScript> =>
      nodeScript(
        stateDir,
        `const sandbox = await vmpod.Sandbox.attach('race-id', { stateDir: ${JSON.stringify(stateDir)} });
         try {
           const c = await sandbox.createContainer({ id: 'same', bundle: ${JSON.stringify(bundle)} });
           await c.start();
           console.log('created');
         } catch (error) {
           console.log(error.code);
         }
         sandbox.detach();`,
      );
    const [a, b] = await Promise.all([create().result, create().result]);
    expect([a.stdout.trim(), b.stdout.trim()].sort()).toEqual(['ERR_VMPOD_ALREADY_EXISTS', 'created']);
    // The winner's container is whole: its rootfs and its bind mount are there.
    const container = await sandbox.container('same');
    const exec = await container.exec({ args: ['sh', '-c', 'ls /bin/busybox /data/bundle/config.json'] });
    const out = collect(exec.stdout);
    expect((await exec.wait()).exitCode).toBe(0);
    expect((await out).toString()).toBe('/bin/busybox\n/data/bundle/config.json\n');
    const record = await sandbox.record();
    expect(Object.keys(record.containers)).toEqual(['same']);
    await container.delete({ force: true });
    expect((await sandbox.record()).containers).toEqual({});
    await sandbox.delete({ force: true });
  });
});
