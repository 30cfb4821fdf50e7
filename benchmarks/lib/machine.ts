/** Facts about the machine a benchmark ran on, for its JSON line (KVM or TCG, CPUs, ...). */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import { DEFAULT_QEMU_BINARY, kvmUsable } from '../../src/hypervisor/index.js';

export interface MachineFacts {
  date: string;
  accel: 'kvm' | 'tcg';
  cpus: number;
  cpu_model: string;
  mem_gib: number;
  host_kernel: string;
  node: string;
  qemu: string;
  /** 1-minute load average when the benchmark started: the machine is shared. */
  loadavg_1m: number;
  /** Whether KSM merges pages (it lowers PSS of VMs over time). */
  ksm: boolean;
}

export async function machineFacts(): Promise<MachineFacts> {
  let qemu = 'unknown';
  try {
    qemu = /version (\S+)/u.exec(execFileSync(DEFAULT_QEMU_BINARY, ['--version'], { encoding: 'utf8' }))?.[1] ?? qemu;
  } catch {
    // reported as unknown
  }
  let ksm = false;
  try {
    ksm = fs.readFileSync('/sys/kernel/mm/ksm/run', 'utf8').trim() === '1';
  } catch {
    // no KSM
  }
  return {
    date: new Date().toISOString(),
    accel: (await kvmUsable(DEFAULT_QEMU_BINARY)) ? 'kvm' : 'tcg',
    cpus: os.cpus().length,
    cpu_model: os.cpus()[0]?.model ?? 'unknown',
    mem_gib: Math.round(os.totalmem() / 2 ** 30),
    host_kernel: os.release(),
    node: process.version,
    qemu,
    loadavg_1m: Math.round((os.loadavg()[0] ?? 0) * 100) / 100,
    ksm,
  };
}
