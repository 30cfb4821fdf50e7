/**
 * sandbox-memory: host memory of an idle sandbox, every host process it needs counted, against
 * the same VM started by hand.
 *
 * Memory is PSS (Proportional Set Size, /proc/PID/smaps_rollup): pages shared between processes
 * (guest RAM that QEMU and virtiofsd both map, libraries) are split between them, so the sum over
 * a sandbox's processes counts each page once. Variants, interleaved after one warm-up round,
 * each measured after it is ready and `--settle-ms` more (default 3000):
 * - vmpod: `Sandbox.create()` + `start()` with the defaults (q35, 1 vCPU, 256 MiB, shared
 *   filesystem); summed: every process whose command line names the sandbox's folder (QEMU,
 *   virtiofsd) and their descendants. The Node process that created it is not counted: the VM
 *   runs detached and needs no per-sandbox Node process (the listing in the JSON shows which
 *   processes were counted);
 * - qemu-by-hand: the same VM typed by hand: virtiofsd (`--socket-path`, `-o source=`) and
 *   `qemu-system-x86_64 -M q35 -m 256M` with the same memfd backend, kernel, initramfs, kernel
 *   arguments, 4 PCIe root ports, the virtio-serial controller with 4 ports and the
 *   vhost-user-fs device; ready at the init marker on its serial console (a pipe);
 * - qemu-by-hand-no-fs (breakdown): the same without virtio-fs (no virtiofsd, private RAM).
 * Per-process figures (…-qemu, …-virtiofsd) are reported as well.
 *
 * Usage: npm run bench -- sandbox-memory [RUNS] [--settle-ms MS] [--cache GUEST_CACHE_DIR]
 *        (default 5 runs)
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { INIT_MARKER } from '../src/guest/index.js';
import { baseKernelArgs, DEFAULT_QEMU_BINARY, DEFAULT_VIRTIOFSD, hostTscKhz } from '../src/hypervisor/index.js';
import { Sandbox } from '../src/sandbox/index.js';
import { withCleanup, type Cleanup } from './lib/cleanup.js';
import { benchArgs, interleave } from './lib/interleave.js';
import { machineFacts } from './lib/machine.js';
import { processesMentioning, processMemory, withDescendants, type ProcessMemory } from './lib/proc.js';
import { ratios, report } from './lib/report.js';
import { benchStateDir, bootedGuest } from './lib/sandbox.js';

const USAGE = 'usage: npm run bench -- sandbox-memory [RUNS] [--settle-ms MS] [--cache GUEST_CACHE_DIR]';
const MEMORY_MIB = 256;
const AGENT_PORTS = 4;

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

/** PSS of `pids` and their descendants, in MiB: the total and per process name. */
function measure(pids: readonly number[]): { total: number; byName: Record<string, number>; processes: ProcessMemory[] } {
  const processes = withDescendants(pids)
    .map(processMemory)
    .filter((p): p is ProcessMemory => p !== undefined);
  const byName: Record<string, number> = {};
  for (const p of processes) {
    const name = p.name.startsWith('qemu-system') ? 'qemu' : p.name;
    byName[name] = (byName[name] ?? 0) + p.pssKiB / 1024;
  }
  return { total: processes.reduce((sum, p) => sum + p.pssKiB, 0) / 1024, byName, processes };
}

/** A process started by hand. */
interface Started {
  readonly pid: number;
  /** SIGKILL, and wait until it is gone. */
  stop(): Promise<void>;
}

/** Spawns a child (killed on cleanup) and resolves once `line` appears on its stdout or stderr. */
async function spawnUntil(cleanup: Cleanup, binary: string, args: string[], line: string, timeoutMs: number): Promise<Started> {
  const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  const remove = cleanup.add(`${path.basename(binary)} ${child.pid}`, async () => {
    child.kill('SIGKILL');
    await exited;
  });
  let text = '';
  let onAbort = (): void => undefined;
  let timer: NodeJS.Timeout | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      onAbort = () => reject(cleanup.signal.reason as Error);
      cleanup.signal.addEventListener('abort', onAbort, { once: true });
      timer = setTimeout(() => reject(new Error(`${binary}: no "${line}" after ${timeoutMs} ms: ${text.slice(-1000)}`)), timeoutMs);
      const onData = (chunk: Buffer): void => {
        text = (text + chunk.toString('latin1')).slice(-64 * 1024);
        if (text.includes(line)) resolve();
      };
      child.stdout!.on('data', onData);
      child.stderr!.on('data', onData);
      child.once('error', reject);
      child.once('exit', (code) => reject(new Error(`${binary} exited (${code}): ${text.slice(-1000)}`)));
    });
  } catch (error) {
    child.kill('SIGKILL');
    await exited;
    remove();
    throw error;
  } finally {
    clearTimeout(timer);
    cleanup.signal.removeEventListener('abort', onAbort);
  }
  // Keep draining the console so QEMU never blocks on it.
  child.stdout!.resume();
  child.stderr!.resume();
  return {
    pid: child.pid!,
    async stop() {
      child.kill('SIGKILL');
      await exited;
      remove();
    },
  };
}

export default async function main(args: string[]): Promise<void> {
  const { runs, options } = benchArgs(args, 5, { 'settle-ms': '3000', cache: '' }, USAGE);
  const settleMs = Number(options['settle-ms']);
  if (!Number.isInteger(settleMs) || settleMs < 0) throw new Error(`--settle-ms must be a non-negative integer\n${USAGE}`);
  const facts = await machineFacts();
  const listing: Record<string, string[]> = {};

  await withCleanup(async (cleanup) => {
    const { signal } = cleanup;
    const stateDir = await benchStateDir(cleanup);
    const handDir = await benchStateDir(cleanup, 'vb-hand-');
    let guest: { kernel: string; initramfs: string; kernelRelease?: string } | undefined;
    const note = (variant: string, m: ReturnType<typeof measure>): Record<string, number> => {
      listing[variant] = m.processes.map((p) => p.name);
      return { [variant]: m.total, ...Object.fromEntries(Object.entries(m.byName).map(([k, v]) => [`${variant}-${k}`, v])) };
    };

    async function vmpod(): Promise<Record<string, number>> {
      const sandbox = await Sandbox.create({ stateDir, memoryMiB: MEMORY_MIB, ...(options.cache ? { guest: { cacheDir: options.cache } } : {}) }, { signal });
      try {
        await sandbox.start({ signal });
        guest ??= await bootedGuest(sandbox);
        await sleep(settleMs, signal);
        const pids = processesMentioning(sandbox.dir);
        if (!sandbox.pid || !pids.includes(sandbox.pid)) throw new Error(`the sandbox's QEMU (${sandbox.pid}) is not among ${pids.join(', ')}`);
        return note('vmpod', measure(pids));
      } finally {
        await sandbox.delete({ force: true });
      }
    }

    async function byHand(withFs: boolean): Promise<Record<string, number>> {
      if (!guest) throw new Error('the guest assets are known after the first vmpod boot');
      const variant = withFs ? 'qemu-by-hand' : 'qemu-by-hand-no-fs';
      const dir = fs.mkdtempSync(path.join(handDir, 'vm-'));
      const children: Started[] = [];
      try {
        const fsSocket = path.join(dir, 'fs.sock');
        if (withFs) {
          fs.mkdirSync(path.join(dir, 'shared'));
          children.push(await spawnUntil(cleanup, DEFAULT_VIRTIOFSD, [`--socket-path=${fsSocket}`, '-o', `source=${path.join(dir, 'shared')}`, '-o', 'cache=auto'], 'Waiting for vhost-user socket connection', 10_000));
        }
        const qemu = [
          '-M', withFs ? 'q35,memory-backend=mem0' : 'q35',
          ...(facts.accel === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg', '-cpu', 'max']),
          '-smp', '1',
          '-m', `${MEMORY_MIB}M`,
          ...(withFs ? ['-object', `memory-backend-memfd,id=mem0,size=${MEMORY_MIB}M,share=on`] : []),
          '-nodefaults', '-no-user-config', '-nographic', '-serial', 'stdio',
          '-kernel', guest.kernel,
          '-initrd', guest.initramfs,
          '-append', baseKernelArgs('q35', hostTscKhz()).join(' '),
        ];
        for (let i = 0; i < 4; i++) qemu.push('-device', `pcie-root-port,id=rp${i},bus=pcie.0,chassis=${i + 1},addr=0x${(0x10 + i).toString(16)}`);
        qemu.push('-device', 'virtio-serial-pci,id=agent');
        for (let i = 0; i < AGENT_PORTS; i++) {
          qemu.push(
            '-chardev', `socket,id=a${i},path=${path.join(dir, `a${i}.sock`)},server=on,wait=off`,
            '-device', `virtserialport,bus=agent.0,nr=${i + 1},chardev=a${i},name=vmpod.agent.${i}`,
          );
        }
        if (withFs) qemu.push('-chardev', `socket,id=fs,path=${fsSocket}`, '-device', 'vhost-user-fs-pci,chardev=fs,tag=vmpod');
        children.push(await spawnUntil(cleanup, DEFAULT_QEMU_BINARY, qemu, INIT_MARKER, 120_000));
        await sleep(settleMs, signal);
        return note(variant, measure(children.map((c) => c.pid)));
      } finally {
        for (const child of children.reverse()) await child.stop();
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
        ['vmpod-qemu', 'qemu-by-hand-qemu'],
        ['vmpod', 'qemu-by-hand-no-fs'],
      ]),
      { machine: facts, settle_ms: settleMs, processes: listing, vm: { machine: 'q35', cpus: 1, memory_mib: MEMORY_MIB, kernel: guest?.kernel, initramfs: guest?.initramfs } },
    );
  });
}
