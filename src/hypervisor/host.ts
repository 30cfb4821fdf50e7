/**
 * Facts about the host that decide how a VM is started: KVM or TCG, vhost-net, the TSC
 * frequency a microvm guest must be told.
 *
 * @module
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { InvalidArgumentError } from '../errors.js';

/** What the command line builder needs to know about the host. */
export interface HostFacts {
  /** KVM works: /dev/kvm opens and QEMU can start a KVM vCPU with `-cpu host` ({@link kvmUsable}). */
  readonly kvm: boolean;
  /** /dev/vhost-net exists (QEMU 7.2 aborts on `vhost=on` without it). */
  readonly vhostNet: boolean;
  /** /dev/vhost-vsock exists (needed by a vsock device). */
  readonly vhostVsock?: boolean;
  /** TSC frequency in kHz, for microvm's `tsc_early_khz=`; undefined when unknown. */
  readonly tscKhz: number | undefined;
}

/** Roots of /dev, /proc and /sys, injectable for tests. */
export interface HostRoots {
  readonly dev?: string;
  readonly proc?: string;
  readonly sys?: string;
}

function canOpen(file: string): boolean {
  try {
    fs.closeSync(fs.openSync(file, fs.constants.O_RDWR));
    return true;
  } catch {
    return false;
  }
}

const MIN_TSC_KHZ = 100_000;
const MAX_TSC_KHZ = 20_000_000;

/**
 * The host's TSC frequency in kHz, or undefined. Sources, most precise first:
 * 1. `/sys/devices/system/cpu/cpu0/tsc_freq_khz` (kernels that export it);
 * 2. `/proc/cpuinfo` `bogomips` x 500: on x86 with an invariant TSC the kernel derives
 *    `loops_per_jiffy` from `tsc_khz` (lpj = tsc_khz x 1000 / HZ, bogomips = lpj x HZ / 500000),
 *    so this is the calibrated TSC frequency to within 10 kHz.
 */
export function hostTscKhz(roots: HostRoots = {}): number | undefined {
  const sys = roots.sys ?? '/sys';
  const proc = roots.proc ?? '/proc';
  try {
    const khz = Number(fs.readFileSync(path.join(sys, 'devices/system/cpu/cpu0/tsc_freq_khz'), 'utf8').trim());
    if (Number.isInteger(khz) && khz >= MIN_TSC_KHZ && khz <= MAX_TSC_KHZ) return khz;
  } catch {
    // not exported by this kernel
  }
  let cpuinfo: string;
  try {
    cpuinfo = fs.readFileSync(path.join(proc, 'cpuinfo'), 'utf8');
  } catch {
    return undefined;
  }
  const first = cpuinfo.split('\n\n')[0] ?? '';
  const flags = new Set((/^flags\s*:(.*)$/mu.exec(first)?.[1] ?? '').trim().split(/\s+/u));
  const bogomips = Number(/^bogomips\s*:\s*([0-9.]+)$/mu.exec(first)?.[1]);
  if (!flags.has('constant_tsc') || !flags.has('nonstop_tsc') || !Number.isFinite(bogomips)) return undefined;
  const khz = Math.round(bogomips * 500);
  return khz >= MIN_TSC_KHZ && khz <= MAX_TSC_KHZ ? khz : undefined;
}

const kvmProbes = new Map<string, Promise<boolean>>();

/**
 * True when QEMU can run a KVM vCPU here. /dev/kvm alone is not proof: some nested or
 * para-virtualised hosts expose a /dev/kvm on which QEMU aborts while setting up the vCPU
 * (seen here: "failed to set MSR 0x10a", an assertion, SIGABRT). So QEMU itself is asked,
 * once per binary and process: `-accel kvm -cpu host -S` with QMP on stdio, `query-kvm`, `quit`
 * (about 50 ms).
 */
export function kvmUsable(qemuBinary: string, roots: HostRoots = {}): Promise<boolean> {
  if (!canOpen(path.join(roots.dev ?? '/dev', 'kvm'))) return Promise.resolve(false);
  let probe = kvmProbes.get(qemuBinary);
  if (probe === undefined) {
    probe = new Promise<boolean>((resolve) => {
      const child = spawn(
        qemuBinary,
        ['-accel', 'kvm', '-cpu', 'host', '-M', 'microvm', '-m', '64M', '-nodefaults', '-no-user-config', '-nographic', '-S', '-qmp', 'stdio'],
        { stdio: ['pipe', 'pipe', 'ignore'] },
      );
      let out = '';
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      child.stdout.on('data', (chunk: Buffer) => {
        out = (out + chunk.toString()).slice(-8192);
      });
      child.once('error', () => resolve(false));
      child.once('close', (code) => {
        clearTimeout(timer);
        resolve(code === 0 && /"enabled":\s*true/u.test(out));
      });
      child.stdin.on('error', () => undefined);
      child.stdin.end('{"execute":"qmp_capabilities"}\n{"execute":"query-kvm"}\n{"execute":"quit"}\n');
    });
    kvmProbes.set(qemuBinary, probe);
  }
  return probe;
}

/** Probes the host for QEMU `qemuBinary`. */
export async function probeHost(qemuBinary: string, roots: HostRoots = {}): Promise<HostFacts> {
  const dev = roots.dev ?? '/dev';
  return {
    kvm: await kvmUsable(qemuBinary, roots),
    vhostNet: fs.existsSync(path.join(dev, 'vhost-net')),
    vhostVsock: fs.existsSync(path.join(dev, 'vhost-vsock')),
    tscKhz: hostTscKhz(roots),
  };
}

/** Checks a caller-supplied TSC frequency. */
export function tscKhz(value: unknown, field = 'tscKhz'): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < MIN_TSC_KHZ || value > MAX_TSC_KHZ) {
    throw new InvalidArgumentError(field, `${JSON.stringify(value)} is not a TSC frequency in kHz (${MIN_TSC_KHZ}-${MAX_TSC_KHZ})`);
  }
  return value;
}
