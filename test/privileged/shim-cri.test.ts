/**
 * Kubernetes' path to the shim: containerd 1.6's CRI plugin, driven by a small CRI client as
 * kubelet would drive it (helpers/cri-criNode().ts: containerd with CRI, a CNI bridge network, the
 * static pause image, the busybox image). The same cases with the runtime handler `runc`
 * (io.containerd.runc.v2, the reference: proves the harness) and `vmpod` (io.containerd.vmpod.v2,
 * containerd-shim-vmpod-v2 from dist/): a pod gets an IP from CNI; two containers of one pod share
 * one kernel (the guest's for vmpod: one VM per pod) and reach each other over localhost;
 * ExecSync; ContainerStats; the exit code of a container, its log in the CRI format at the CRI log
 * path, the OOMKilled reason of one past its memory limit; StopPodSandbox + RemovePodSandbox
 * leave nothing (netns, veths, mounts, shim processes, VMs, QEMU).
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { resolveGuestAssets } from '../../src/guest/assets.js';
import { packageRoot } from '../../src/native.js';
import { parseCriLog } from './helpers/cri.js';
import { criNodeSkipReason, useCriNode, vmpodShimSkipReason } from './helpers/cri-node.js';
import { removeTestImages } from './helpers/oci-images.js';
import { removePauseImage } from './helpers/pause-image.js';

const exec = promisify(execFile);
const baseSkip = await criNodeSkipReason();
const vmpodSkip = baseSkip ?? (await vmpodShimSkipReason());
const VMPOD_CLI = path.join(packageRoot, 'dist', 'cli', 'main.js');
const MiB = 1024 * 1024;

async function guestRelease(): Promise<string> {
  const release = (await resolveGuestAssets({ verify: 'size' })).manifest?.kernelRelease;
  if (release === undefined) throw new Error('the guest assets have no manifest: no kernel release to expect');
  return release;
}

afterAll(async () => {
  await removeTestImages();
  await removePauseImage();
});

const HANDLERS = [
  { handler: 'runc', skip: baseSkip, vm: false },
  { handler: 'vmpod', skip: vmpodSkip, vm: true },
] as const;

for (const { handler, skip, vm } of HANDLERS) {
  describe.skipIf(skip !== undefined)(`CRI with the runtime handler ${handler}`, () => {
    const criNode = useCriNode();

    /** `vmpod ps --json` over the node's state directory. */
    async function vmpodPs(): Promise<{ id: string; state: string; pid?: number; cpus: number; memoryMiB: number; containers: { id: string; status: string }[] }[]> {
      const { stdout } = await exec(process.execPath, [VMPOD_CLI, 'ps', '--json'], { env: { ...process.env, VMPOD_STATE_DIR: criNode().stateDir } });
      return JSON.parse(stdout) as Awaited<ReturnType<typeof vmpodPs>>;
    }

    it('a pod of two containers: an IP from CNI, one kernel, localhost between them, ExecSync, stats, logs; removal leaves nothing', async () => {
      const config = await criNode().podConfig(`two-${handler}`);
      const pod = await criNode().runPod(handler, config);
      const status = await criNode().cri.podSandboxStatus(pod.id);
      expect(status.state).toBe('SANDBOX_READY');
      expect(status.runtimeHandler).toBe(handler);
      const ip = status.network?.ip ?? '';
      expect(ip).toMatch(new RegExp(`^${criNode().subnet.replaceAll('.', '\\.')}\\.\\d+$`, 'u'));
      // CRI made it with CNI, under containerd's state (netns_mounts_under_state_dir).
      expect(pod.netns?.startsWith(`${criNode().ctd.dir}/`), pod.netns).toBe(true);

      const server = await criNode().createContainer(pod, 'server', [
        'sh', '-c', 'mkdir -p /www && cat /proc/sys/kernel/random/boot_id > /www/boot && uname -r > /www/release && echo serving && exec httpd -f -p 8080 -h /www',
      ]);
      const client = await criNode().createContainer(pod, 'client', ['sh', '-c', 'echo client-started; echo client-err >&2; exec sleep 3600']);
      await criNode().cri.startContainer(server);
      await criNode().cri.startContainer(client);
      expect((await criNode().untilState(server, 'CONTAINER_RUNNING')).state).toBe('CONTAINER_RUNNING');
      expect((await criNode().untilState(client, 'CONTAINER_RUNNING')).state).toBe('CONTAINER_RUNNING');

      // The client reaches the server over the pod's localhost (one network namespace).
      const fetched = await criNode().cri.execSync(client, ['sh', '-c', 'for i in $(seq 1 150); do wget -q -O - http://127.0.0.1:8080/boot && exit 0; sleep 0.2; done; exit 1'], 120);
      expect(fetched.exitCode, fetched.stderr.toString()).toBe(0);
      const serverBoot = fetched.stdout.toString().trim();
      const clientBoot = await criNode().cri.execSync(client, ['cat', '/proc/sys/kernel/random/boot_id'], 60);
      expect(clientBoot.exitCode).toBe(0);
      // One kernel for both: the same boot id; the guest's for vmpod (not the host's), the host's for runc.
      expect(clientBoot.stdout.toString().trim()).toBe(serverBoot);
      const hostBoot = (await fs.readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim();
      if (vm) expect(serverBoot).not.toBe(hostBoot);
      else expect(serverBoot).toBe(hostBoot);
      const release = await criNode().cri.execSync(client, ['sh', '-c', 'uname -r; wget -q -O - http://127.0.0.1:8080/release'], 60);
      const expected = vm ? await guestRelease() : os.release();
      expect(release.stdout.toString()).toBe(`${expected}\n${expected}\n`);
      if (vm) expect(expected).not.toBe(os.release());

      // The pod's address (CNI's, in the netns CRI made) is the container's.
      const addr = await criNode().cri.execSync(client, ['ip', '-4', '-o', 'addr', 'show'], 60);
      expect(addr.stdout.toString()).toContain(` ${ip}/24 `);

      const sync = await criNode().cri.execSync(client, ['sh', '-c', 'echo out; echo err >&2; exit 5'], 60);
      expect({ stdout: sync.stdout.toString(), stderr: sync.stderr.toString(), exitCode: sync.exitCode }).toEqual({ stdout: 'out\n', stderr: 'err\n', exitCode: 5 });

      const stats = await criNode().cri.containerStats(server);
      expect(stats.attributes?.id).toBe(server);
      expect(stats.cpu?.usageCoreNanoSeconds?.value ?? 0).toBeGreaterThan(0);
      expect(stats.memory?.workingSetBytes?.value ?? 0).toBeGreaterThan(0);

      const clientLog = parseCriLog(await fs.readFile(path.join(config.logDirectory!, 'client.log'), 'utf8'));
      expect(clientLog.map(({ stream, tag, content }) => ({ stream, tag, content }))).toEqual(
        expect.arrayContaining([
          { stream: 'stdout', tag: 'F', content: 'client-started' },
          { stream: 'stderr', tag: 'F', content: 'client-err' },
        ]),
      );
      const serverLog = parseCriLog(await fs.readFile(path.join(config.logDirectory!, 'server.log'), 'utf8'));
      expect(serverLog.map((l) => l.content)).toContain('serving');

      const listed = await criNode().cri.listContainers({ podSandboxId: pod.id });
      expect(listed.map((c) => c.id).sort()).toEqual([server, client].sort());

      if (vm) {
        // One VM for the pod, its QEMU alive, the pod's containers in it.
        const rows = await vmpodPs();
        expect(rows).toHaveLength(1);
        expect(rows[0]!.state).toBe('running');
        expect(() => process.kill(rows[0]!.pid ?? 0, 0)).not.toThrow();
        expect(rows[0]!.containers.map((c) => c.id)).toEqual(expect.arrayContaining([server, client]));
      }

      await criNode().removePod(pod.id);
      expect(await criNode().cri.listPodSandbox()).toEqual([]);
      expect(await criNode().settledLeftovers()).toEqual([]);
      if (vm) expect(await vmpodPs()).toEqual([]);
    });

    it.skipIf(!vm)("the pod's VM is sized from the pod's resources (CRI's sandbox annotations): RAM = limit + 128 MiB, vCPUs = quota / period", async () => {
      const config = await criNode().podConfig(`sized-${handler}`, {
        linux: { resources: { memoryLimitInBytes: 256 * MiB, cpuQuota: 200_000, cpuPeriod: 100_000 } },
      });
      const pod = await criNode().runPod(handler, config);
      const id = await criNode().createContainer(pod, 'sleeper', ['sleep', '3600']);
      await criNode().cri.startContainer(id);
      expect((await criNode().untilState(id, 'CONTAINER_RUNNING')).state).toBe('CONTAINER_RUNNING');
      const rows = await vmpodPs();
      expect(rows.map((r) => ({ id: r.id, cpus: r.cpus, memoryMiB: r.memoryMiB }))).toEqual([{ id: pod.id, cpus: Math.min(2, os.availableParallelism()), memoryMiB: 256 + 128 }]);
      const nproc = await criNode().cri.execSync(id, ['nproc'], 60);
      expect(nproc.stdout.toString().trim()).toBe(String(Math.min(2, os.availableParallelism())));
      await criNode().removePod(pod.id);
      expect(await criNode().settledLeftovers()).toEqual([]);
    });

    it('a container exit code and its CRI log; OOMKilled past the memory limit; removal leaves nothing', async () => {
      const config = await criNode().podConfig(`exits-${handler}`);
      const pod = await criNode().runPod(handler, config);
      const exiter = await criNode().createContainer(pod, 'exiter', ['sh', '-c', 'echo out-line; echo err-line >&2; printf partial; exit 3']);
      await criNode().cri.startContainer(exiter);
      const exited = await criNode().untilState(exiter, 'CONTAINER_EXITED');
      expect({ state: exited.state, exitCode: exited.exitCode, reason: exited.reason }).toEqual({ state: 'CONTAINER_EXITED', exitCode: 3, reason: 'Error' });
      expect(exited.finishedAt).toBeGreaterThanOrEqual(exited.startedAt);
      expect(exited.logPath).toBe(path.join(config.logDirectory!, 'exiter.log'));
      const log = parseCriLog(await fs.readFile(exited.logPath, 'utf8'));
      expect(log.map(({ stream, tag, content }) => ({ stream, tag, content }))).toEqual(
        expect.arrayContaining([
          { stream: 'stdout', tag: 'F', content: 'out-line' },
          { stream: 'stderr', tag: 'F', content: 'err-line' },
          // A last line without its newline is a partial one.
          { stream: 'stdout', tag: 'P', content: 'partial' },
        ]),
      );

      // dd's 100 MiB buffer, filled from /dev/zero, in a 32 MiB limit.
      const oom = await criNode().createContainer(pod, 'oom', ['dd', 'if=/dev/zero', 'of=/dev/null', 'bs=100M', 'count=1'], {
        linux: { resources: { memoryLimitInBytes: 32 * MiB, memorySwapLimitInBytes: 32 * MiB } },
      });
      await criNode().cri.startContainer(oom);
      const killed = await criNode().untilState(oom, 'CONTAINER_EXITED');
      expect({ state: killed.state, exitCode: killed.exitCode, reason: killed.reason }).toEqual({ state: 'CONTAINER_EXITED', exitCode: 137, reason: 'OOMKilled' });

      await criNode().removePod(pod.id);
      expect(await criNode().settledLeftovers()).toEqual([]);
    });
  });
}
