/**
 * sandbox-memory: host memory of an idle sandbox, every host process it needs counted, against
 * the same VM started by hand.
 *
 * Memory is PSS (Proportional Set Size, /proc/PID/smaps_rollup): pages shared between processes
 * (guest RAM that QEMU and virtiofsd both map, libraries) are split between them, so the sum over
 * a sandbox's processes counts each page once. Variants, interleaved after one warm-up round,
 * each measured once it is ready and `--settle-ms` more (default 3000):
 * - vmpod: `Sandbox.create()` + `start()` with the defaults (q35, 1 vCPU, 256 MiB, shared
 *   filesystem); summed: every process whose command line names the sandbox's folder (QEMU,
 *   virtiofsd) and their descendants. The Node process that created it is not counted: the VM
 *   runs detached and needs no per-sandbox Node process (the JSON lists the processes counted);
 * - qemu-by-hand: the same VM typed by hand (benchmarks/lib/by-hand.ts: virtiofsd and QEMU with
 *   the same machine, memfd RAM, kernel, initramfs, arguments and devices), ready at the init
 *   marker on its console;
 * - qemu-by-hand-no-fs (breakdown): the same without virtio-fs (no virtiofsd, private RAM).
 * Also reported per variant: PSS per process kind (…-qemu, …-virtiofsd), and …-own, the PSS of
 * anonymous and shmem pages only (guest RAM, heaps, the TCG code buffer). QEMU keeps the guest
 * kernel image mapped, so its file pages are shared with any other VM booting the same file at
 * that moment (other users' sandboxes on a shared machine): that moves PSS by tens of MiB from
 * run to run, and not …-own. `kernel_sharers` counts those other processes at each sample.
 *
 * Usage: npm run bench -- sandbox-memory [RUNS] [--settle-ms MS] [--cache GUEST_CACHE_DIR]
 *        (default 7 runs)
 */
import fs from 'node:fs';
import path from 'node:path';
import { baseKernelArgs, hostTscKhz } from '../src/hypervisor/index.js';
import { Sandbox } from '../src/sandbox/index.js';
import { startVmByHand } from './lib/by-hand.js';
import { withCleanup } from './lib/cleanup.js';
import { benchArgs, interleave } from './lib/interleave.js';
import { machineFacts } from './lib/machine.js';
import { processesMapping, processesMentioning, processMemory, withDescendants, type ProcessMemory } from './lib/proc.js';
import { ratios, report } from './lib/report.js';
import { benchStateDir, bootedGuest } from './lib/sandbox.js';

const USAGE = 'usage: npm run bench -- sandbox-memory [RUNS] [--settle-ms MS] [--cache GUEST_CACHE_DIR]';
const MEMORY_MIB = 256;

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal.reason as Error);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

export default async function main(args: string[]): Promise<void> {
  const { runs, options } = benchArgs(args, 7, { 'settle-ms': '3000', cache: '' }, USAGE);
  const settleMs = Number(options['settle-ms']);
  if (!Number.isInteger(settleMs) || settleMs < 0) throw new Error(`--settle-ms must be a non-negative integer\n${USAGE}`);
  const facts = await machineFacts();
  const listing: Record<string, string[]> = {};
  const sharers: Record<string, number[]> = {};

  await withCleanup(async (cleanup) => {
    const { signal } = cleanup;
    const stateDir = await benchStateDir(cleanup);
    const handDir = await benchStateDir(cleanup, 'vb-hand-');
    let guest: { kernel: string; initramfs: string; kernelRelease?: string } | undefined;

    /** PSS of `pids` and their descendants, in MiB: total, own (anon + shmem), per process kind. */
    function measure(variant: string, pids: readonly number[]): Record<string, number> {
      const processes = withDescendants(pids)
        .map(processMemory)
        .filter((p): p is ProcessMemory => p !== undefined);
      const out: Record<string, number> = { [variant]: 0, [`${variant}-own`]: 0 };
      for (const p of processes) {
        const kind = `${variant}-${p.name.startsWith('qemu-system') ? 'qemu' : p.name}`;
        out[variant]! += p.pssKiB / 1024;
        out[`${variant}-own`]! += (p.pssAnonKiB + p.pssShmemKiB) / 1024;
        out[kind] = (out[kind] ?? 0) + p.pssKiB / 1024;
      }
      listing[variant] = processes.map((p) => p.name);
      (sharers[variant] ??= []).push(guest ? processesMapping(guest.kernel, pids).length : 0);
      return out;
    }

    async function vmpod(): Promise<Record<string, number>> {
      const sandbox = await Sandbox.create({ stateDir, memoryMiB: MEMORY_MIB, ...(options.cache ? { guest: { cacheDir: options.cache } } : {}) }, { signal });
      try {
        await sandbox.start({ signal });
        guest ??= await bootedGuest(sandbox);
        await sleep(settleMs, signal);
        const pids = processesMentioning(sandbox.dir);
        if (!sandbox.pid || !pids.includes(sandbox.pid)) throw new Error(`the sandbox's QEMU (${sandbox.pid}) is not among ${pids.join(', ')}`);
        return measure('vmpod', pids);
      } finally {
        await sandbox.delete({ force: true });
      }
    }

    async function byHand(sharedFs: boolean): Promise<Record<string, number>> {
      if (!guest) throw new Error('the guest assets are known after the first vmpod boot');
      const dir = fs.mkdtempSync(path.join(handDir, 'vm-'));
      try {
        const vm = await startVmByHand(cleanup, {
          kernel: guest.kernel,
          initramfs: guest.initramfs,
          append: baseKernelArgs('q35', hostTscKhz()).join(' '),
          accel: facts.accel,
          memoryMiB: MEMORY_MIB,
          dir,
          sharedFs,
        });
        try {
          await sleep(settleMs, signal);
          return measure(sharedFs ? 'qemu-by-hand' : 'qemu-by-hand-no-fs', vm.pids);
        } finally {
          await vm.stop();
        }
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    }

    const samples = await interleave(
      runs,
      [
        ['vmpod', vmpod],
        ['qemu-by-hand', () => byHand(true)],
        ['qemu-by-hand-no-fs', () => byHand(false)],
      ],
      { signal },
    );
    const results = samples.results();
    report(
      'sandbox-memory',
      'pss_mib',
      runs,
      results,
      ratios(results, [
        ['vmpod', 'qemu-by-hand'],
        ['vmpod-own', 'qemu-by-hand-own'],
        ['vmpod-qemu', 'qemu-by-hand-qemu'],
        ['vmpod', 'qemu-by-hand-no-fs'],
      ]),
      {
        machine: facts,
        settle_ms: settleMs,
        processes: listing,
        kernel_sharers: Object.fromEntries(Object.entries(sharers).map(([k, v]) => [k, v.slice(1)])), // without the warm-up's
        vm: { machine: 'q35', cpus: 1, memory_mib: MEMORY_MIB, kernel: guest?.kernel, initramfs: guest?.initramfs },
      },
    );
  });
}
