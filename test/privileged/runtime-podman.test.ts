/**
 * podman (Debian's 4.3) as a real caller of the OCI runtime: `podman --runtime ABS run` of an
 * image from a local OCI layout, with runc (the reference: proves the harness) and with
 * vmpod-runtime (each container in its own VM: `uname -r` prints the guest's kernel). podman,
 * conmon and the runtime get folders of their own (helpers/podman.ts); `--network none` always.
 * Cases: run --rm (kernel release), run's exit code, run -d + exec + logs + stop + rm, run -it
 * under a pseudo-terminal. Afterwards nothing of podman is left: no container, no conmon, no
 * runtime state, no VM, no mount, no netns.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { busyboxImage, imageSkipReason, removeTestImages, type TestImage } from './helpers/oci-images.js';
import { OCI_RUNTIMES } from './helpers/oci-runtimes.js';
import { makePodman, podmanSkipReason, processesMentioning, type Podman } from './helpers/podman.js';
import { librarySandboxId } from '../../src/runtime/sandbox-choice.js';

const PTY_RELAY = path.resolve('test/privileged/sandbox/pty-relay.py');
const baseSkip = (await podmanSkipReason()) ?? (await imageSkipReason());

function netnsNames(): string[] {
  try {
    return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
      .split('\n')
      .map((line) => line.split(' ')[0] ?? '')
      .filter(Boolean);
  } catch {
    return [];
  }
}

function mountsUnder(dir: string): Promise<string[]> {
  return fs
    .readFile('/proc/self/mountinfo', 'utf8')
    .then((text) => text.split('\n').map((line) => line.split(' ')[4] ?? '').filter((p) => p.startsWith(`${dir}/`)));
}

afterAll(async () => {
  await removeTestImages();
});

for (const runtime of OCI_RUNTIMES) {
  const skip = baseSkip ?? runtime.skip;
  describe.skipIf(skip !== undefined)(`podman --runtime ${runtime.name}`, () => {
    let pm: Podman;
    let image: TestImage;
    let netnsBefore: string[];
    const ids: string[] = [];

    beforeAll(async () => {
      netnsBefore = netnsNames();
      image = await busyboxImage();
      pm = await makePodman(runtime.path);
    });

    afterAll(async () => {
      if (pm === undefined) return;
      try {
        // podman's view: nothing left after the cases' own rm/--rm.
        const ps = await pm.podman(['ps', '--all', '--quiet', '--no-trunc']);
        expect(ps.code).toBe(0);
        expect(ps.stdout.trim()).toBe('');
        // The host's: no conmon, runtime, monitor or VM process of these containers, no runtime
        // state, no mount under podman's folder, no new netns.
        // A VM's command line names its sandbox: the container id, or a digest of a long one.
        for (const id of ids) {
          expect(await processesMentioning(id), `processes of ${id}`).toEqual([]);
          expect(await processesMentioning(librarySandboxId(id)), `processes of ${id}'s sandbox`).toEqual([]);
        }
        for (const id of ids) {
          const state = spawnSync(runtime.path, ['state', id], { encoding: 'utf8' });
          expect(state.status, `${runtime.name} state ${id}: ${state.stdout}`).not.toBe(0);
        }
        expect(await mountsUnder(pm.dir)).toEqual([]);
        expect(netnsNames().filter((n) => !netnsBefore.includes(n))).toEqual([]);
      } finally {
        await pm.destroy();
      }
      expect(await processesMentioning(pm.dir)).toEqual([]);
      expect(await fs.stat(pm.dir).catch(() => undefined)).toBeUndefined();
    });

    /** `podman run --rm ARGS...`, the container's id recorded (--cidfile) for the leftover check. */
    async function runRm(args: string[]): Promise<Awaited<ReturnType<Podman['podman']>>> {
      const cidfile = path.join(pm.dir, `cid-${ids.length}-${Date.now()}`);
      const r = await pm.podman(['run', '--rm', '--cidfile', cidfile, ...pm.containerArgs, ...args]);
      const id = (await fs.readFile(cidfile, 'utf8').catch(() => '')).trim();
      if (id !== '') ids.push(id);
      return r;
    }

    /** The full id podman gave the container named `name`. */
    async function idOf(name: string): Promise<string> {
      const r = await pm.podman(['inspect', '--format', '{{.Id}}', name]);
      expect(r.code, r.stderr).toBe(0);
      const id = r.stdout.trim();
      expect(id).toMatch(/^[0-9a-f]{64}$/u);
      ids.push(id);
      return id;
    }

    it('run --rm prints the kernel release of where the container runs', async () => {
      const r = await runRm([image.ociRef, 'uname', '-r']);
      expect(r.code, r.stderr).toBe(0);
      // Read after the run: on a fresh machine the first sandbox builds the guest assets.
      expect(r.stdout.trim()).toBe(await runtime.kernelRelease());
      if (runtime.vm) expect(r.stdout.trim()).not.toBe(os.release());
      // The image's layers, as podman unpacked them: layer 3 there, layer 2's whiteout applied.
      const cat = await runRm([image.ociRef, 'sh', '-c', `cat /etc/motd; ls ${image.whiteout} 2>&1; true`]);
      expect(cat.code, cat.stderr).toBe(0);
      expect(cat.stdout).toContain(image.motd);
      expect(cat.stdout).toMatch(/No such file or directory/u);
    });

    it("run passes the container's exit code through", async () => {
      const r = await runRm([image.ociRef, 'sh', '-c', 'echo out; echo err >&2; exit 7']);
      expect(ids.length).toBeGreaterThan(0);
      expect(r.code, r.stderr).toBe(7);
      expect(r.stdout).toBe('out\n');
      expect(r.stderr).toContain('err\n');
    });

    it('run -d, exec, logs, stop and rm', async () => {
      const name = `vt-pm-${runtime.name}-${process.pid}`;
      const run = await pm.podman(['run', '-d', '--name', name, ...pm.containerArgs, image.ociRef, 'sh', '-c', 'echo started; trap "echo got TERM; exit 3" TERM; while true; do sleep 0.2; done']);
      expect(run.code, run.stderr).toBe(0);
      const id = await idOf(name);
      expect(run.stdout.trim()).toBe(id);

      const state = await pm.podman(['inspect', '--format', '{{.State.Status}} {{.State.Pid}}', name]);
      expect(state.stdout.trim()).toMatch(/^running [1-9][0-9]*$/u);
      // The pid podman recorded (the runtime's --pid-file) is a live host process.
      const pid = Number(state.stdout.trim().split(' ')[1]);
      expect(() => process.kill(pid, 0)).not.toThrow();

      const exec = await pm.podman(['exec', name, 'sh', '-c', 'cat /etc/motd; uname -r; exit 4']);
      expect(exec.code, exec.stderr).toBe(4);
      expect(exec.stdout).toBe(`${image.motd}${await runtime.kernelRelease()}\n`);

      const logs = await pm.podman(['logs', name]);
      expect(logs.code, logs.stderr).toBe(0);
      expect(logs.stdout).toBe('started\n');

      const stop = await pm.podman(['stop', '--time', '30', name]);
      expect(stop.code, stop.stderr).toBe(0);
      const stopped = await pm.podman(['inspect', '--format', '{{.State.Status}} {{.State.ExitCode}}', name]);
      // The trap ran: SIGTERM reached the shell, which exited 3 (not SIGKILL's 137).
      expect(stopped.stdout.trim()).toBe('exited 3');
      expect((await pm.podman(['logs', name])).stdout).toBe('started\ngot TERM\n');
      expect(() => process.kill(pid, 0)).toThrow();

      const rm = await pm.podman(['rm', name]);
      expect(rm.code, rm.stderr).toBe(0);
      expect((await pm.podman(['ps', '--all', '--quiet'])).stdout.trim()).toBe('');
      expect(await processesMentioning(id)).toEqual([]);
    });

    it('run -it under a terminal: what is typed reaches the shell, its output comes back', async () => {
      const cidfile = path.join(pm.dir, 'cid-tty');
      const args = [PTY_RELAY, '24', '80', '--', '/usr/bin/podman', ...pm.globalArgs, 'run', '-it', '--rm', '--cidfile', cidfile, ...pm.containerArgs, image.ociRef, 'sh'];
      const relay = spawn('python3', args, { env: pm.env, stdio: ['pipe', 'pipe', 'pipe'] });
      let screen = '';
      let status = '';
      relay.stdout.setEncoding('utf8').on('data', (d: string) => (screen += d));
      relay.stderr.setEncoding('utf8').on('data', (d: string) => (status += d));
      const closed = new Promise<number | null>((resolve) => relay.on('close', resolve));
      const type = (text: string) => relay.stdin.write(`${JSON.stringify({ write: Buffer.from(text).toString('base64') })}\n`);
      try {
        // The shell's prompt first (busybox sh: "/ # "), then a line whose answer is not in it.
        const deadline = Date.now() + 150_000;
        while (!screen.includes('# ') && Date.now() < deadline && relay.exitCode === null) await new Promise((r) => setTimeout(r, 100));
        expect(screen, status).toContain('# ');
        type('echo $((6*7))x; [ -t 0 ] && echo tty-yes; exit 5\r');
        relay.stdin.end();
        expect(await closed).toBe(0);
      } finally {
        if (relay.exitCode === null) relay.kill('SIGKILL');
      }
      ids.push((await fs.readFile(cidfile, 'utf8')).trim());
      expect(screen).toContain('42x');
      expect(screen).toContain('tty-yes');
      expect(status).toContain('exit 5');
    });
  });
}
