/**
 * qemu-boot: time from spawning QEMU to the guest's init marker (`vmpod-init: ready`), for
 * vmpod's generated command line and for a bare QEMU line (see `rawQemuBoot`) with the same kernel,
 * initramfs and kernel arguments, on q35 and on microvm. Variants, interleaved after one
 * warm-up round:
 * - raw-microvm / raw-q35: `rawQemuBoot()`, console on a pipe;
 * - vmpod-microvm / vmpod-q35: `QemuHypervisor.start()` (detached, seccomp, QMP negotiated,
 *   console to a log file), then `waitForConsole()`.
 *
 * Usage: npm run bench -- qemu-boot [RUNS] [CACHE_DIR]   (default 10, /var/cache/vmpod/guest)
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { INIT_MARKER, resolveGuestAssets } from '../src/guest/index.js';
import { baseKernelArgs, hostTscKhz, QemuHypervisor, rawQemuBoot } from '../src/hypervisor/index.js';
import { ratios, report, Samples } from './lib/report.js';

type Machine = 'q35' | 'microvm';

export default async function main(args: string[]): Promise<void> {
  const runs = Number(args[0] ?? 10);
  const assets = await resolveGuestAssets({ cacheDir: args[1] ?? '/var/cache/vmpod/guest' });
  const hypervisor = new QemuHypervisor();
  const host = await hypervisor.host();
  const tsc = hostTscKhz();

  async function raw(machine: Machine): Promise<number> {
    const result = await rawQemuBoot({
      kernel: assets.kernel,
      initramfs: assets.initramfs,
      append: baseKernelArgs(machine, tsc).join(' '),
      marker: INIT_MARKER,
      machine,
    });
    return result.markerMs;
  }

  async function vmpod(machine: Machine): Promise<number> {
    const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-bench-'));
    try {
      const start = performance.now();
      const vm = await hypervisor.start({
        id: 'qemu-boot',
        machine,
        cpus: 1,
        memory: { sizeMiB: 256 },
        kernel: assets.kernel,
        initramfs: assets.initramfs,
        consoleLog: path.join(runDir, 'console.log'),
        runDir,
      });
      try {
        await vm.waitForConsole(INIT_MARKER, { timeoutMs: 120_000 });
        return performance.now() - start;
      } finally {
        await vm.kill();
      }
    } finally {
      fs.rmSync(runDir, { recursive: true, force: true });
    }
  }

  const variants: [string, () => Promise<number>][] = [
    ['raw-microvm', () => raw('microvm')],
    ['vmpod-microvm', () => vmpod('microvm')],
    ['raw-q35', () => raw('q35')],
    ['vmpod-q35', () => vmpod('q35')],
  ];
  const samples = new Samples();
  for (let round = 0; round <= runs; round++) {
    for (const [name, fn] of variants) {
      const ms = await fn();
      if (round > 0) samples.add(name, ms);
    }
  }
  const results = samples.results();
  report(
    'qemu-boot',
    'ms',
    runs,
    results,
    ratios(results, [
      ['vmpod-microvm', 'raw-microvm'],
      ['vmpod-q35', 'raw-q35'],
      ['vmpod-q35', 'vmpod-microvm'],
    ]),
    { accel: host.kvm ? 'kvm' : 'tcg', kernel: assets.manifest?.kernelRelease, modules: assets.manifest?.modules.load.length },
  );
}
