/**
 * The shim's task metrics decoded by containerd itself: `ctr task metrics --format json` asks
 * containerd for a running vmpod task's Stats, and containerd turns the shim's `Any` into its own
 * cgroup v2 Metrics type (an unknown type URL or a wrong field number fails or shows here), then
 * prints it as JSON (zero fields left out). A containerd of the test's own (helpers/containerd.ts)
 * runs the shim from a link in the test's folder (prefix vmpod-shimmetrics-), removed afterwards.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../src/sandbox/sandbox.js';
import { serverPaths } from '../../src/shim/main.js';
import { containerdSkipReason, type Containerd } from './helpers/containerd.js';
import { startShimContainerd, vmpodShimSkipReason } from './helpers/cri-node.js';
import { imageSkipReason, removeTestImages } from './helpers/oci-images.js';
import { processesMentioning } from './helpers/podman.js';

const skip = (await containerdSkipReason()) ?? (await imageSkipReason()) ?? (await vmpodShimSkipReason());
const IMAGE = 'localhost/vmpod-test/busybox:busybox';
const RUNTIME = 'io.containerd.vmpod.v2';

describe.skipIf(skip !== undefined)(`shim metrics through containerd${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let dir: string;
  let stateDir: string;
  let ctd: Containerd | undefined;

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-shimmetrics-'));
    ({ ctd, stateDir } = await startShimContainerd(dir));
  });

  afterAll(async () => {
    try {
      if (ctd !== undefined) {
        expect((await ctd.ctr(['tasks', 'ls', '--quiet'])).stdout.trim()).toBe('');
        expect((await ctd.ctr(['containers', 'ls', '--quiet'])).stdout.trim()).toBe('');
      }
    } finally {
      await ctd?.stop();
      for (const info of await Sandbox.list({ stateDir }).catch(() => [])) await Sandbox.remove(info.id, { stateDir, force: true }).catch(() => undefined);
      for (const pid of await processesMentioning(dir)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
      }
      if (ctd !== undefined) await fs.rm(serverPaths(ctd.address, ctd.namespace, { VMPOD_SHIM_DIR: path.join(dir, 'shim') }).socketPath, { force: true });
      await fs.rm(dir, { recursive: true, force: true });
      await removeTestImages();
    }
  });

  async function taskState(id: string): Promise<string | undefined> {
    const ls = await ctd!.ctr(['tasks', 'ls']);
    return (ls.stdout.split('\n').find((line) => line.split(/\s+/u)[0] === id) ?? '').split(/\s+/u)[2];
  }

  async function untilState(id: string, state: string): Promise<void> {
    const deadline = Date.now() + 150_000;
    while ((await taskState(id)) !== state && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    expect(await taskState(id), `task ${id}`).toBe(state);
  }

  it('containerd decodes a running task\'s stats as cgroup v2 Metrics: pids, CPU time, memory and its limit', async () => {
    const id = `vt-shimmetrics-${process.pid}`;
    const limit = 96 * 1024 * 1024;
    // 16 MiB written to a file of the guest (page cache, charged to the container's memory), some
    // CPU, then two processes for good: sh waiting for one sleep.
    const script = 'dd if=/dev/zero of=/tmp/fill bs=1M count=16 2>/dev/null; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 100000 & wait';
    const run = await ctd!.ctr(['run', '-d', '--null-io', '--memory-limit', String(limit), '--runtime', RUNTIME, IMAGE, id, 'sh', '-c', script]);
    expect(run.code, `${run.stderr}\n${ctd!.log().slice(-2000)}`).toBe(0);
    try {
      await untilState(id, 'RUNNING');
      // Polled until the script's last step shows (the file written, sh waiting for its sleep).
      type Decoded = { pids?: { current?: number }; cpu?: { usage_usec?: number; user_usec?: number }; memory?: { usage?: number; usage_limit?: number } };
      let decoded: Decoded = {};
      const deadline = Date.now() + 120_000;
      for (;;) {
        const metrics = await ctd!.ctr(['tasks', 'metrics', '--format', 'json', id]);
        expect(metrics.code, metrics.stderr).toBe(0);
        decoded = JSON.parse(metrics.stdout) as Decoded;
        if (((decoded.memory?.usage ?? 0) >= 16 * 1024 * 1024 && decoded.pids?.current === 2) || Date.now() > deadline) break;
        await new Promise((r) => setTimeout(r, 500));
      }
      expect(decoded.pids?.current, JSON.stringify(decoded)).toBe(2); // sh and its sleep
      expect(decoded.cpu?.usage_usec ?? 0).toBeGreaterThan(0);
      expect(decoded.cpu?.user_usec ?? 0).toBeGreaterThan(0);
      expect(decoded.memory?.usage ?? 0).toBeGreaterThanOrEqual(16 * 1024 * 1024);
      expect(decoded.memory?.usage_limit).toBe(limit);
    } finally {
      await ctd!.ctr(['tasks', 'kill', '--signal', 'SIGKILL', id]);
      await untilState(id, 'STOPPED').catch(() => undefined);
      await ctd!.ctr(['tasks', 'rm', id]);
      await ctd!.ctr(['containers', 'rm', id]);
    }
  });
});
