/**
 * A child process of the concurrency tests (unit: a fake sysfs tree shared by several children;
 * privileged: the real /sys): reserves a few 2 MiB pages of the global pool, checks while holding
 * them that the pool still has them, releases them, and so on. Prints one JSON line with what it
 * did and every violation it saw, then exits 0 (the test asserts on that line).
 *
 * Run: `node --import tsx test/unit/devices-hugepages-worker.ts '<JSON of WorkerOptions>'`.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { InsufficientHugepagesError } from '../../src/devices/errors.js';
import { reserveHugepages } from '../../src/devices/hugepages.js';
import { FakeSysfs } from './devices-fake-sysfs.js';

export interface HugepageWorkerOptions {
  /** Root of a fake sysfs tree; omitted: the real /sys. */
  sysfs?: string;
  /** Host lock folder to pass to vmpod; omitted: its default. */
  lockDir?: string;
  /** A name for the violations it reports. */
  name: string;
  /** A folder where it says `<name>.ready` and then waits for `go`, so that all workers start together. */
  barrier?: string;
  cycles: number;
  /** Each cycle asks for 1..maxPages pages. */
  maxPages: number;
  /** Pool size before any worker started: the pool never goes below base + this worker's pages while it holds them. */
  base: number;
  /** Reads of the pool while holding a reservation. */
  checks: number;
  /** Real hosts: a program that maps N pages of a hugetlbfs file (argv: FILE PAGES PAGESIZE), and the mount to use. */
  mapper?: string;
  mount?: string;
}

export interface HugepageWorkerReport {
  name: string;
  reserved: number;
  partial: number;
  insufficient: number;
  /** Pages added over all cycles. */
  pages: number;
  violations: string[];
  errors: string[];
}

const run = promisify(execFile);
const MiB = 1024 * 1024;
const opts = JSON.parse(process.argv[2] ?? '{}') as HugepageWorkerOptions;
const root = opts.sysfs ?? '/sys';
const sysfs = opts.sysfs === undefined ? undefined : new FakeSysfs(opts.sysfs);
const options = { ...(sysfs ? { sysfs } : {}), ...(opts.lockDir ? { lockDir: opts.lockDir } : {}) };
const total = async (): Promise<number> =>
  Number((await fs.readFile(path.join(root, 'kernel/mm/hugepages/hugepages-2048kB/nr_hugepages'), 'utf8')).trim());

if (opts.barrier !== undefined) {
  await fs.writeFile(path.join(opts.barrier, `${opts.name}.ready`), '');
  while (!(await fs.access(path.join(opts.barrier, 'go')).then(() => true, () => false))) await sleep(1);
}
const report: HugepageWorkerReport = { name: opts.name, reserved: 0, partial: 0, insufficient: 0, pages: 0, violations: [], errors: [] };
for (let cycle = 0; cycle < opts.cycles; cycle++) {
  const count = 1 + Math.floor(Math.random() * opts.maxPages);
  const allowPartial = Math.random() < 0.5;
  let reservation;
  try {
    reservation = await reserveHugepages({ size: '2M', count, allowPartial }, options);
  } catch (error) {
    if (error instanceof InsufficientHugepagesError && error.rolledBack) report.insufficient++;
    else report.errors.push(`cycle ${cycle}: reserve ${count}: ${String(error)}`);
    continue;
  }
  const taken = reservation.obtained - reservation.previous;
  report.reserved++;
  report.pages += taken;
  if (reservation.partial) report.partial++;
  try {
    for (let i = 0; i < opts.checks; i++) {
      const now = await total();
      if (now < opts.base + taken) {
        report.violations.push(`${opts.name} cycle ${cycle}: holds ${taken} pages (recorded ${reservation.previous} -> ${reservation.obtained}) but the pool is ${now} (base ${opts.base})`);
      }
      await sleep(Math.random() * 3);
    }
    if (opts.mapper !== undefined && opts.mount !== undefined && taken > 0) {
      // Use the pages: a pool that lost them makes the mapping fail.
      const file = path.join(opts.mount, `${opts.name}-${cycle}`);
      try {
        await run(opts.mapper, [file, String(taken), String(2 * MiB)]);
      } catch (error) {
        report.violations.push(`${opts.name} cycle ${cycle}: could not map its ${taken} pages: ${String(error)}`);
      } finally {
        await fs.rm(file, { force: true });
      }
    }
  } finally {
    try {
      await reservation.release();
    } catch (error) {
      report.errors.push(`cycle ${cycle}: release: ${String(error)}`);
    }
  }
}
process.stdout.write(`${JSON.stringify(report)}\n`);
