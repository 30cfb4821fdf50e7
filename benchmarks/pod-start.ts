/**
 * pod-start: a Kubernetes pod through containerd 1.6's CRI plugin with the vmpod shim
 * (io.containerd.vmpod.v2) against runc's shim (io.containerd.runc.v2), the same containerd, the
 * same CRI client and images (the tests' CRI node: test/privileged/helpers/cri-node.ts).
 *
 * Variants, interleaved after one warm-up round:
 * - pod-vmpod / pod-runc: RunPodSandbox + CreateContainer + StartContainer of a busybox `sleep`,
 *   until ContainerStatus says it runs; its removal (StopPodSandbox + RemovePodSandbox) is timed
 *   apart as remove-vmpod / remove-runc;
 * - ctr-vmpod / ctr-runc: `ctr run --rm --runtime io.containerd.X.v2 IMAGE ID true`, spawn to exit.
 * Then, once: the shims' memory per pod: the PSS (smaps_rollup) of the vmpod shim's server
 * process(es) with 1, 2 and 4 pods running, and of runc's shims likewise (each the median of 5
 * readings 300 ms apart: a Node server's PSS moves with its garbage collector); the added PSS per
 * pod is (PSS with 4 - PSS with 1) / 3.
 *
 * Usage: npm run bench -- pod-start [RUNS]   (default 3; build dist/ first: npm run build:ts)
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import { BUSYBOX_IMAGE, criNodeSkipReason, K8S_NAMESPACE, startCriNode, vmpodShimSkipReason, type CriNode } from '../test/privileged/helpers/cri-node.js';
import { CTR } from '../test/privileged/helpers/containerd.js';
import { removeTestImages } from '../test/privileged/helpers/oci-images.js';
import { removePauseImage } from '../test/privileged/helpers/pause-image.js';
import { processesMentioning } from '../test/privileged/helpers/podman.js';
import { withCleanup } from './lib/cleanup.js';
import { benchArgs, interleave } from './lib/interleave.js';
import { machineFacts } from './lib/machine.js';
import { ratios, report } from './lib/report.js';

const USAGE = 'usage: npm run bench -- pod-start [RUNS]';
const HANDLERS = ['vmpod', 'runc'] as const;
type Handler = (typeof HANDLERS)[number];

/** Pss of a process in KiB (0 if it is gone). */
async function pssKiB(pid: number): Promise<number> {
  const text = await fs.readFile(`/proc/${pid}/smaps_rollup`, 'utf8').catch(() => '');
  return Number(/^Pss:\s+(\d+) kB/mu.exec(text)?.[1] ?? 0);
}

/** The shim processes of a handler (the vmpod shim's servers: node; runc's: containerd-shim-runc-v2). */
async function shimPids(node: CriNode, handler: Handler): Promise<number[]> {
  if (handler === 'vmpod') return node.vmpodShimPids();
  const pids: number[] = [];
  for (const pid of await processesMentioning(node.ctd.dir)) {
    if ((await fs.readlink(`/proc/${pid}/exe`).catch(() => '')).endsWith('containerd-shim-runc-v2')) pids.push(pid);
  }
  return pids;
}

function timedCtr(node: CriNode, args: string[], signal: AbortSignal): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(CTR, ['--address', node.ctd.address, '--namespace', K8S_NAMESPACE, ...args], { stdio: ['ignore', 'ignore', 'pipe'], signal });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('exit', (code, sig) => {
      const ms = performance.now() - t0;
      if (code === 0) resolve(ms);
      else reject(new Error(`ctr ${args.join(' ')}: ${sig ?? `exit ${code}`}: ${stderr.trim().slice(-800)}`));
    });
  });
}

export default async function main(args: string[]): Promise<void> {
  const { runs } = benchArgs(args, 3, {}, USAGE);
  const skip = (await criNodeSkipReason()) ?? (await vmpodShimSkipReason());
  if (skip !== undefined) throw new Error(`pod-start cannot run here: ${skip}`);
  const facts = await machineFacts();

  await withCleanup(async (cleanup) => {
    const { signal } = cleanup;
    cleanup.add('images', async () => {
      await removeTestImages();
      await removePauseImage();
    });
    const node = await startCriNode();
    cleanup.add('CRI node', () => node.close());
    const version = await node.cri.version();
    let n = 0;

    async function runPod(handler: Handler): Promise<{ podId: string; ms: number }> {
      const config = await node.podConfig(`bench-${handler}-${n++}`);
      const t0 = performance.now();
      const pod = await node.runPod(handler, config);
      const id = await node.createContainer(pod, 'sleeper', ['sleep', '3600']);
      await node.cri.startContainer(id);
      const status = await node.untilState(id, 'CONTAINER_RUNNING');
      const ms = performance.now() - t0;
      if (status.state !== 'CONTAINER_RUNNING') throw new Error(`${handler} container ${id}: ${status.state} ${status.reason} ${status.message}`);
      return { podId: pod.id, ms };
    }

    const podRound = (handler: Handler) => async () => {
      const { podId, ms } = await runPod(handler);
      const t1 = performance.now();
      await node.removePod(podId);
      return { [`pod-${handler}`]: ms, [`remove-${handler}`]: performance.now() - t1 };
    };
    const ctrRound = (handler: Handler) => () => timedCtr(node, ['run', '--rm', '--runtime', `io.containerd.${handler}.v2`, BUSYBOX_IMAGE, `vb-podstart-ctr-${handler}-${n++}`, 'true'], signal);

    const samples = await interleave(
      runs,
      [
        ['pod-vmpod', podRound('vmpod')],
        ['pod-runc', podRound('runc')],
        ['ctr-vmpod', ctrRound('vmpod')],
        ['ctr-runc', ctrRound('runc')],
      ],
      { signal },
    );

    // The shims' PSS with 1, 2 and 4 pods of each handler.
    const memory: Record<string, Record<string, number>> = {};
    for (const handler of HANDLERS) {
      const pods: string[] = [];
      const byCount: Record<string, number> = {};
      for (const count of [1, 2, 4]) {
        while (pods.length < count) pods.push((await runPod(handler)).podId);
        const pids = await shimPids(node, handler);
        const readings: number[] = [];
        for (let i = 0; i < 5; i++) {
          let total = 0;
          for (const pid of pids) total += await pssKiB(pid);
          readings.push(total);
          await new Promise((r) => setTimeout(r, 300));
        }
        byCount[`pss-kib-${count}-pods`] = readings.sort((a, b) => a - b)[2]!;
        byCount[`processes-${count}-pods`] = pids.length;
      }
      byCount['added-kib-per-pod'] = Math.round(((byCount['pss-kib-4-pods'] ?? 0) - (byCount['pss-kib-1-pods'] ?? 0)) / 3);
      memory[handler] = byCount;
      for (const podId of pods) await node.removePod(podId);
      process.stderr.write(`  ${handler} shim PSS: ${JSON.stringify(byCount)}\n`);
    }

    const results = samples.results();
    report(
      'pod-start',
      'ms',
      runs,
      results,
      ratios(results, [
        ['pod-vmpod', 'pod-runc'],
        ['remove-vmpod', 'remove-runc'],
        ['ctr-vmpod', 'ctr-runc'],
      ]),
      { machine: facts, versions: { containerd: version.runtimeVersion, cri: version.runtimeApiVersion }, shimMemory: memory },
    );
  });
}
