/**
 * The vmpod shim through containerd's CRI plugin when something dies (helpers/cri-criNode().ts):
 * - kill -9 of the shim's server: containerd notices, runs `containerd-shim-vmpod-v2 delete` per
 *   task, the tasks end, the pod can be stopped and removed, and its VM is gone;
 * - kill -9 of the pod's QEMU: the tasks exit (255), the statuses say so, the shim keeps serving
 *   until the pod is removed, which leaves nothing;
 * - a containerd restart (same config, root and state): the pod's task is still there, running,
 *   and answers ContainerStatus, `ctr tasks ls` and ExecSync; then removal leaves nothing.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../src/sandbox/sandbox.js';
import { criNodeSkipReason, K8S_NAMESPACE, useCriNode, vmpodShimSkipReason, type RunningPod } from './helpers/cri-node.js';
import { removeTestImages } from './helpers/oci-images.js';
import { removePauseImage } from './helpers/pause-image.js';

const skip = (await criNodeSkipReason()) ?? (await vmpodShimSkipReason());

/**
 * Cases that fail on the shim as it is (2026-12-08), for the reasons given; skipped unless
 * VMPOD_TEST_KNOWN_FAILURES=1. Remove an entry once its bug is fixed: the case then runs always.
 */
const KNOWN_FAILURES: Record<string, string> = {};
const known = (name: string): boolean => KNOWN_FAILURES[name] !== undefined && process.env['VMPOD_TEST_KNOWN_FAILURES'] !== '1';

afterAll(async () => {
  await removeTestImages();
  await removePauseImage();
});

async function until<T>(what: () => Promise<T>, ok: (value: T) => boolean, timeoutMs = 120_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await what();
    if (ok(value) || Date.now() > deadline) return value;
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe.skipIf(skip !== undefined)('the vmpod shim under faults, through CRI', () => {
  const criNode = useCriNode();

  /** A vmpod pod with one running container (`sleep`). */
  async function sleeperPod(name: string): Promise<{ pod: RunningPod; id: string }> {
    const pod = await criNode().runPod('vmpod', await criNode().podConfig(name));
    const id = await criNode().createContainer(pod, 'sleeper', ['sleep', '3600']);
    await criNode().cri.startContainer(id);
    expect((await criNode().untilState(id, 'CONTAINER_RUNNING')).state).toBe('CONTAINER_RUNNING');
    return { pod, id };
  }

  it.skipIf(known('shimKilled'))("kill -9 of the shim's server: containerd runs the shim's delete, the tasks end, the VM goes, the pod is removed", async () => {
    const { pod, id } = await sleeperPod('shim-killed');
    const servers = await criNode().vmpodShimPids();
    expect(servers).toHaveLength(1);
    expect(await Sandbox.list({ stateDir: criNode().stateDir })).toHaveLength(1);
    process.kill(servers[0]!, 'SIGKILL');

    const status = await criNode().untilState(id, 'CONTAINER_EXITED');
    expect(status.state).toBe('CONTAINER_EXITED');
    expect(status.exitCode).not.toBe(0);
    expect((await until(() => criNode().cri.podSandboxStatus(pod.id), (s) => s.state === 'SANDBOX_NOTREADY')).state).toBe('SANDBOX_NOTREADY');
    // `delete` removed the VM once no task of the pod was left.
    expect(await until(() => Sandbox.list({ stateDir: criNode().stateDir }), (list) => list.length === 0)).toEqual([]);

    await criNode().removePod(pod.id);
    expect(await criNode().settledLeftovers()).toEqual([]);
  });

  it.skipIf(known('qemuKilled'))("kill -9 of the pod's QEMU: its tasks exit 255, the shim keeps serving, removal leaves nothing", async () => {
    const { pod, id } = await sleeperPod('qemu-killed');
    const [vm] = await Sandbox.list({ stateDir: criNode().stateDir });
    expect(vm?.state).toBe('running');
    const servers = await criNode().vmpodShimPids();
    expect(servers).toHaveLength(1);
    process.kill(vm!.pid!, 'SIGKILL');

    const status = await criNode().untilState(id, 'CONTAINER_EXITED');
    expect({ state: status.state, exitCode: status.exitCode }).toEqual({ state: 'CONTAINER_EXITED', exitCode: 255 });
    expect((await until(() => criNode().cri.podSandboxStatus(pod.id), (s) => s.state === 'SANDBOX_NOTREADY')).state).toBe('SANDBOX_NOTREADY');
    // CRI deleted the exited tasks (as with runc); the containers stay until the pod is removed.
    const containers = await criNode().ctd.ctr(['containers', 'ls', '--quiet'], { namespace: K8S_NAMESPACE });
    expect(containers.stdout.split('\n')).toEqual(expect.arrayContaining([id, pod.id]));
    expect((await criNode().ctd.ctr(['tasks', 'ls', '--quiet'], { namespace: K8S_NAMESPACE })).stdout.trim()).toBe('');
    // Those deletes released the dead pod: its sandbox record is gone, and the server, with no
    // task left, went idle and exited (a delete that failed on the dead agent kept both).
    expect((await until(() => Sandbox.list({ stateDir: criNode().stateDir }), (l) => l.length === 0)).map((s) => s.id)).toEqual([]);
    expect(await until(() => criNode().vmpodShimPids(), (p) => p.length === 0)).toEqual([]);

    await criNode().removePod(pod.id);
    expect(await criNode().settledLeftovers()).toEqual([]);
  });

  it("a containerd restart: the pod's task still runs and answers; then removal leaves nothing", async () => {
    const { pod, id } = await sleeperPod('ctd-restart');
    const servers = await criNode().vmpodShimPids();
    expect(servers).toHaveLength(1);
    const before = criNode().ctd.pid();
    await criNode().ctd.restart();
    expect(criNode().ctd.pid()).not.toBe(before);

    // The CRI plugin reloads its pods and containers, and reconnects to the shim.
    const status = await until(() => criNode().cri.containerStatus(id).catch(() => undefined), (s) => s?.state === 'CONTAINER_RUNNING', 60_000);
    expect(status?.state).toBe('CONTAINER_RUNNING');
    expect((await criNode().cri.podSandboxStatus(pod.id)).state).toBe('SANDBOX_READY');
    const tasks = await criNode().ctd.ctr(['tasks', 'ls'], { namespace: K8S_NAMESPACE });
    expect(tasks.stdout).toMatch(new RegExp(`^${id}\\s+\\d+\\s+RUNNING`, 'mu'));
    const sync = await criNode().cri.execSync(id, ['echo', 'still here'], 60);
    expect({ stdout: sync.stdout.toString(), exitCode: sync.exitCode }).toEqual({ stdout: 'still here\n', exitCode: 0 });
    expect(await criNode().vmpodShimPids()).toEqual(servers);

    await criNode().removePod(pod.id);
    expect(await criNode().settledLeftovers()).toEqual([]);
  });
});
