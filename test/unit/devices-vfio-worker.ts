/**
 * A child process of the VFIO concurrency test: binds one device (and so its whole IOMMU group)
 * of a fake sysfs tree shared with another child, checks while holding it that every member of
 * the group stays on vfio-pci, releases it, and again, until it has held the group `binds`
 * times. A bind refused because the other child holds the group is counted and retried. Prints
 * one JSON line with what it did and every violation it saw, then exits 0.
 *
 * Run: `node --import tsx test/unit/devices-vfio-worker.ts '<JSON of VfioWorkerOptions>'`.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { bindVfio } from '../../src/devices/vfio.js';
import { FakeSysfs } from './devices-fake-sysfs.js';

export interface VfioWorkerOptions {
  sysfs: string;
  lockDir?: string;
  name: string;
  /** A folder where it says `<name>.ready` and then waits for `go`, so that all workers start together. */
  barrier?: string;
  address: string;
  /** Every device of the group. */
  members: string[];
  /** Successful binds to make. */
  binds: number;
  /** Reads of the members' drivers while holding the group. */
  checks: number;
  /** Give up after this long (ms). */
  deadlineMs: number;
  /**
   * Holds its first binding until another worker was refused once (it says so in the barrier
   * folder), up to 10 s: the contention the test is about then happens whatever the scheduling.
   */
  holdFirst?: boolean;
}

export interface VfioWorkerReport {
  name: string;
  bound: number;
  refused: number;
  holders: string[];
  violations: string[];
  errors: string[];
}

const opts = JSON.parse(process.argv[2] ?? '{}') as VfioWorkerOptions;
const sysfs = new FakeSysfs(opts.sysfs);
const options = { sysfs, addresses: () => [], owner: opts.name, ...(opts.lockDir ? { lockDir: opts.lockDir } : {}) };
if (opts.barrier !== undefined) {
  await fs.writeFile(path.join(opts.barrier, `${opts.name}.ready`), '');
  while (!(await fs.access(path.join(opts.barrier, 'go')).then(() => true, () => false))) await sleep(1);
}
const report: VfioWorkerReport = { name: opts.name, bound: 0, refused: 0, holders: [], violations: [], errors: [] };
const deadline = Date.now() + opts.deadlineMs;

while (report.bound < opts.binds && Date.now() < deadline) {
  let binding;
  try {
    binding = await bindVfio(opts.address, options);
  } catch (error) {
    if ((error as { code?: string }).code === 'ERR_VMPOD_IOMMU_GROUP_IN_USE') {
      report.refused++;
      if (opts.barrier !== undefined && report.refused === 1) await fs.writeFile(path.join(opts.barrier, `${opts.name}.refused`), '');
      const holder = (error as { holder?: { owner?: string } }).holder?.owner;
      if (holder !== undefined && !report.holders.includes(holder)) report.holders.push(holder);
    } else {
      report.errors.push(`bind ${opts.address}: ${String(error)}`);
    }
    await sleep(Math.random() * 3);
    continue;
  }
  report.bound++;
  try {
    if (opts.holdFirst && opts.barrier !== undefined && report.bound === 1) {
      const until = Date.now() + 10_000;
      const refused = async (): Promise<boolean> => (await fs.readdir(opts.barrier!)).some((f) => f.endsWith('.refused') && f !== `${opts.name}.refused`);
      while (!(await refused()) && Date.now() < until) await sleep(2);
    }
    for (let i = 0; i < opts.checks; i++) {
      for (const m of opts.members) {
        const driver = await sysfs.linkName(`bus/pci/devices/${m}/driver`);
        if (driver !== 'vfio-pci') report.violations.push(`${opts.name} holds group of ${opts.address} but ${m} is on ${driver ?? 'no driver'}`);
      }
      await sleep(Math.random() * 3);
    }
  } finally {
    try {
      await binding.release();
    } catch (error) {
      report.errors.push(`release: ${String(error)}`);
    }
  }
  await sleep(Math.random() * 3);
}
process.stdout.write(`${JSON.stringify(report)}\n`);
