/**
 * containerd's runc shim (io.containerd.runc.v2, Debian's containerd 1.6) as a real caller of
 * the OCI runtime: a containerd started by the test with its own config (helpers/containerd.ts),
 * the test image imported from its oci-archive with `ctr images import`, and `ctr run
 * --runc-binary ABS --runc-root DIR`: the shim calls the runtime with --root, --log and
 * --log-format json for create, start, state, kill, delete and exec. With runc (the reference:
 * proves the harness) and vmpod-runtime (`uname -r` prints the guest's kernel). Afterwards:
 * no task, no container, no runtime state, no shim, and containerd itself stopped.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { containerdSkipReason, startContainerd, type Containerd } from './helpers/containerd.js';
import { busyboxImage, imageSkipReason, removeTestImages } from './helpers/oci-images.js';
import { OCI_RUNTIMES } from './helpers/oci-runtimes.js';
import { processesMentioning } from './helpers/podman.js';

const baseSkip = (await containerdSkipReason()) ?? (await imageSkipReason());
const IMAGE = 'localhost/vmpod-test/busybox:busybox';

afterAll(async () => {
  await removeTestImages();
});

for (const runtime of OCI_RUNTIMES) {
  const skip = baseSkip ?? runtime.skip;
  describe.skipIf(skip !== undefined)(`containerd's runc shim with --runc-binary ${runtime.name}`, () => {
    let ctd: Containerd;
    let runtimeRoot: string;
    const ids: string[] = [];
    let n = 0;

    beforeAll(async () => {
      const image = await busyboxImage();
      ctd = await startContainerd();
      runtimeRoot = path.join(ctd.dir, 'runtime-root');
      const imported = await ctd.ctr(['images', 'import', '--base-name', 'localhost/vmpod-test/busybox', image.ociArchive]);
      expect(imported.code, imported.stderr).toBe(0);
      expect((await ctd.ctr(['images', 'ls', '--quiet'])).stdout.split('\n')).toContain(IMAGE);
    });

    afterAll(async () => {
      if (ctd === undefined) return;
      const dir = ctd.dir;
      try {
        expect((await ctd.ctr(['tasks', 'ls', '--quiet'])).stdout.trim()).toBe('');
        expect((await ctd.ctr(['containers', 'ls', '--quiet'])).stdout.trim()).toBe('');
        // The shim gives the runtime --root RUNC_ROOT/NAMESPACE.
        const root = path.join(runtimeRoot, ctd.namespace);
        for (const id of ids) {
          const state = spawnSync(runtime.path, ['--root', root, 'state', id], { encoding: 'utf8' });
          expect(state.status, `${runtime.name} state ${id}: ${state.stdout}`).not.toBe(0);
        }
        const list = spawnSync(runtime.path, ['--root', root, 'list', '--format', 'json'], { encoding: 'utf8' });
        expect(list.status, list.stderr).toBe(0);
        expect(JSON.parse(list.stdout.trim() || 'null') ?? []).toEqual([]);
        // The shims' command lines name containerd's socket (in our folder): none may be left.
        const shims = (await processesMentioning(dir)).filter((pid) => {
          const exe = spawnSync('readlink', [`/proc/${pid}/exe`], { encoding: 'utf8' }).stdout.trim();
          return exe.endsWith('containerd-shim-runc-v2');
        });
        expect(shims).toEqual([]);
      } finally {
        await ctd.stop();
      }
      expect(await processesMentioning(dir)).toEqual([]);
      for (const id of ids) expect(await processesMentioning(id), `processes of ${id}`).toEqual([]);
      expect(await fs.stat(dir).catch(() => undefined)).toBeUndefined();
    });

    function newId(): string {
      const id = `vt-ctd-${process.pid}-${n++}`;
      ids.push(id);
      return id;
    }

    const runArgs = () => ['--runc-binary', runtime.path, '--runc-root', runtimeRoot, '--fifo-dir', path.join(ctd.dir, 'fifo')];

    it('ctr run --rm prints the kernel release of where the container runs', async () => {
      const r = await ctd.ctr(['run', '--rm', ...runArgs(), IMAGE, newId(), 'uname', '-r']);
      expect(r.code, `${r.stderr}\n${ctd.log().slice(-3000)}`).toBe(0);
      // Read after the run: on a fresh machine the first sandbox builds the guest assets.
      expect(r.stdout.trim()).toBe(await runtime.kernelRelease());
      if (runtime.vm) expect(r.stdout.trim()).not.toBe(os.release());
    });

    it("ctr run passes the container's exit code and both output streams through", async () => {
      const r = await ctd.ctr(['run', '--rm', ...runArgs(), IMAGE, newId(), 'sh', '-c', 'cat /etc/motd; echo err >&2; exit 7']);
      expect(r.code, `${r.stderr}\n${ctd.log().slice(-3000)}`).toBe(7);
      expect(r.stdout).toBe('vmpod test image\n');
      expect(r.stderr).toContain('err\n');
    });

    async function taskStatus(id: string): Promise<{ pid: number; state: string | undefined }> {
      const ls = await ctd.ctr(['tasks', 'ls']);
      const row = ls.stdout.split('\n').find((line) => line.split(/\s+/u)[0] === id) ?? '';
      const [, pid, state] = row.split(/\s+/u);
      return { pid: Number(pid), state };
    }

    async function untilState(id: string, state: string): Promise<void> {
      const deadline = Date.now() + 150_000;
      while ((await taskStatus(id)).state !== state && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
      expect((await taskStatus(id)).state, `task ${id}`).toBe(state);
    }

    it('ctr run, then task exec and task kill from other ctr calls: run exits with the status the TERM trap chose', async () => {
      const id = newId();
      const run = ctd.ctr(['run', ...runArgs(), IMAGE, id, 'sh', '-c', 'trap "echo got TERM; exit 3" TERM; echo started; while true; do sleep 0.2; done']);
      await untilState(id, 'RUNNING');
      const running = await taskStatus(id);
      // The task's pid (the runtime's --pid-file, read by the shim) is a live host process.
      expect(running.pid).toBeGreaterThan(0);
      expect(() => process.kill(running.pid, 0)).not.toThrow();

      const exec = await ctd.ctr(['tasks', 'exec', '--exec-id', 'e1', id, 'sh', '-c', 'cat /etc/motd; uname -r; exit 4']);
      expect(exec.code, exec.stderr).toBe(4);
      expect(exec.stdout).toBe(`vmpod test image\n${await runtime.kernelRelease()}\n`);

      const kill = await ctd.ctr(['tasks', 'kill', '--signal', 'SIGTERM', id]);
      expect(kill.code, kill.stderr).toBe(0);
      const done = await run;
      // The exit status the shim got from the runtime: the trap's 3, not a signal death.
      expect(done.code, `${done.stderr}\n${ctd.log().slice(-3000)}`).toBe(3);
      expect(done.stdout).toBe('started\ngot TERM\n');
      expect(() => process.kill(running.pid, 0)).toThrow();
      // ctr run (without --rm) deleted the task; the container is removed here.
      expect((await taskStatus(id)).state).toBeUndefined();
      const crm = await ctd.ctr(['containers', 'rm', id]);
      expect(crm.code, crm.stderr).toBe(0);
    });

    it('ctr run -d, task kill (KILL), task rm, container rm', async () => {
      const id = newId();
      const run = await ctd.ctr(['run', '-d', ...runArgs(), IMAGE, id, 'sh', '-c', 'trap "" TERM; while true; do sleep 0.2; done']);
      expect(run.code, `${run.stderr}\n${ctd.log().slice(-3000)}`).toBe(0);
      await untilState(id, 'RUNNING');
      const { pid } = await taskStatus(id);
      // A running task cannot be removed without --force.
      const early = await ctd.ctr(['tasks', 'rm', id]);
      expect(early.code).not.toBe(0);
      const kill = await ctd.ctr(['tasks', 'kill', '--signal', 'SIGKILL', id]);
      expect(kill.code, kill.stderr).toBe(0);
      await untilState(id, 'STOPPED');
      expect(() => process.kill(pid, 0)).toThrow();
      const rm = await ctd.ctr(['tasks', 'rm', id]);
      expect(rm.code, rm.stderr).toBe(0);
      expect((await taskStatus(id)).state).toBeUndefined();
      const crm = await ctd.ctr(['containers', 'rm', id]);
      expect(crm.code, crm.stderr).toBe(0);
    });
  });
}
