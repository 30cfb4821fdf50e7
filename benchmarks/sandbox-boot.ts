/**
 * sandbox-boot: how long until a sandbox can run containers, against a bare QEMU boot.
 *
 * Variants, interleaved after one warm-up round:
 * - raw-qemu: `rawQemuBoot()`, a bare QEMU line (`-nodefaults -serial stdio -kernel -initrd -append`) with the same machine,
 *   kernel, initramfs and kernel arguments as the sandbox, from spawn to the init marker
 *   (`vmpod-init: ready`, printed right before /init execs the agent);
 * - vmpod-ready: `Sandbox.create()` + `start()` resolved (virtiofsd up, QEMU detached with its
 *   QMP monitors, agent handshake, clock set, shared filesystem mounted in the guest). Nothing
 *   else runs in this process meanwhile: an earlier version tailed the console log (inotify plus a
 *   20 ms poll) during the boot, and that alone made vmpod-ready about 15% slower;
 * - vmpod-run: `node dist/cli/main.js run --rm -- true` end to end (Node start, boot, one
 *   container, teardown), as a script would call the CLI (build it first: npm run build:ts);
 * - qemu-same-devices (breakdown, q35 only): the sandbox's VM typed by hand
 *   (benchmarks/lib/by-hand.ts: memfd RAM, 4 root ports, virtio-serial with 4 ports,
 *   vhost-user-fs on a virtiofsd started beforehand, virtio-serial with 8 stream ports), from
 *   spawning QEMU to the marker: what the guest's devices add to the bare boot, apart from
 *   anything vmpod does.
 * The sandboxes live in a temporary state directory, removed at the end even on failure.
 *
 * Usage: npm run bench -- sandbox-boot [RUNS] [--machine q35|microvm] [--cache GUEST_CACHE_DIR]
 *        (default 10 runs, q35 like a default sandbox, the library's default guest cache)
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { packageRoot } from '../src/native.js';
import { INIT_MARKER } from '../src/guest/index.js';
import { baseKernelArgs, hostTscKhz, rawQemuBoot } from '../src/hypervisor/index.js';
import { Sandbox, type SandboxConfig } from '../src/sandbox/index.js';
import { startVmByHand } from './lib/by-hand.js';
import { withCleanup } from './lib/cleanup.js';
import { benchArgs, interleave } from './lib/interleave.js';
import { machineFacts } from './lib/machine.js';
import { ratios, report } from './lib/report.js';
import { benchStateDir, bootedGuest } from './lib/sandbox.js';

const USAGE = 'usage: npm run bench -- sandbox-boot [RUNS] [--machine q35|microvm] [--cache GUEST_CACHE_DIR]';

export default async function main(args: string[]): Promise<void> {
  const { runs, options } = benchArgs(args, 10, { machine: 'q35', cache: '' }, USAGE);
  if (options.machine !== 'q35' && options.machine !== 'microvm') throw new Error(USAGE);
  const machine = options.machine;
  const cli = path.join(packageRoot, 'dist', 'cli', 'main.js');
  if (!fs.existsSync(cli)) throw new Error(`${cli} is missing: run "npm run build:ts" first`);
  const facts = await machineFacts();

  await withCleanup(async (cleanup) => {
    const { signal } = cleanup;
    const stateDir = await benchStateDir(cleanup);
    const config: SandboxConfig = { stateDir, machine, ...(options.cache ? { guest: { cacheDir: options.cache } } : {}) };
    let guest: { kernel: string; initramfs: string; kernelRelease?: string } | undefined;

    async function vmpodReady(): Promise<Record<string, number>> {
      const t0 = performance.now();
      const sandbox = await Sandbox.create(config, { signal });
      try {
        await sandbox.start({ signal });
        const ready = performance.now() - t0;
        const booted = await bootedGuest(sandbox);
        guest ??= booted;
        if (booted.kernel !== guest.kernel || booted.initramfs !== guest.initramfs) {
          throw new Error(`the guest assets changed during the run (${guest.initramfs} -> ${booted.initramfs}; the agent was rebuilt?): run again`);
        }
        const t1 = performance.now();
        await sandbox.delete({ force: true, signal });
        return { 'vmpod-ready': ready, 'vmpod-delete': performance.now() - t1 };
      } catch (error) {
        await sandbox.delete({ force: true }).catch(() => undefined);
        throw error;
      }
    }

    async function rawQemu(): Promise<number> {
      if (!guest) throw new Error('the guest assets are known after the first vmpod boot');
      const result = await rawQemuBoot({
        kernel: guest.kernel,
        initramfs: guest.initramfs,
        // The sandbox's own kernel arguments: vmpod's base ones and nothing else (no debug, no extra).
        append: baseKernelArgs(machine, hostTscKhz()).join(' '),
        marker: INIT_MARKER,
        machine,
        cpus: 1,
        memoryMiB: 256,
        timeoutMs: 120_000,
        signal,
      });
      return result.markerMs;
    }

    async function sameDevices(): Promise<number> {
      if (!guest) throw new Error('the guest assets are known after the first vmpod boot');
      const dir = fs.mkdtempSync(path.join(stateDir, 'by-hand-'));
      try {
        const vm = await startVmByHand(cleanup, {
          kernel: guest.kernel,
          initramfs: guest.initramfs,
          append: baseKernelArgs('q35', hostTscKhz()).join(' '),
          accel: facts.accel,
          memoryMiB: 256,
          dir,
        });
        await vm.stop();
        return vm.markerMs;
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    }

    function vmpodRun(): Promise<number> {
      return new Promise((resolve, reject) => {
        const t0 = performance.now();
        const args = [cli, 'run', '--rm', '--machine', machine, '--', 'true'];
        const env = { ...process.env, VMPOD_STATE_DIR: stateDir, ...(options.cache ? { VMPOD_GUEST_CACHE: options.cache } : {}) };
        const child = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'], signal });
        let output = '';
        child.stdout.on('data', (d: Buffer) => (output += d.toString()));
        child.stderr.on('data', (d: Buffer) => (output += d.toString()));
        child.on('error', reject);
        child.on('close', (code) => {
          if (code === 0) resolve(performance.now() - t0);
          else reject(new Error(`vmpod ${args.slice(1).join(' ')} exited ${code}: ${output.slice(-2000)}`));
        });
      });
    }

    const samples = await interleave(
      runs,
      [
        ['vmpod-ready', vmpodReady],
        ['raw-qemu', rawQemu],
        ['vmpod-run', vmpodRun],
        ...(machine === 'q35' ? [['qemu-same-devices', sameDevices] as const] : []),
      ],
      { signal, digits: 0 },
    );
    const results = samples.results();
    report(
      'sandbox-boot',
      'ms',
      runs,
      results,
      ratios(results, [
        ['vmpod-ready', 'raw-qemu'],
        ['qemu-same-devices', 'raw-qemu'],
        ['vmpod-ready', 'qemu-same-devices'],
        ['vmpod-run', 'raw-qemu'],
        ['vmpod-run', 'vmpod-ready'],
      ]),
      { machine: facts, vm: { machine, cpus: 1, memory_mib: 256, kernel: guest?.kernel, initramfs: guest?.initramfs, guest_kernel: guest?.kernelRelease } },
    );
  });
}
