/**
 * The soak: `npm run soak -- N [--stand-in] [--seed S]`. N cycles of a sandbox's life (create,
 * start, a bundle container through the share with a CNI bridge network, exec, delete: see
 * cycle.ts), each run by a process of its own into which a fault is injected at a random moment:
 * kill -9 of the orchestrating process, of QEMU, of virtiofsd, SIGSTOP of QEMU, or nothing. After
 * each cycle the soak deletes whatever is left from its own process (that must always succeed;
 * after a SIGSTOP, 5 s after it, while the cycle's process still waits on the stopped VM),
 * and after the first cycle, every 10 cycles and at the end it takes a census of what the host
 * holds (see {@link census}). Nothing may grow: the run fails (exit 1) when anything did.
 *
 * Prints one line per cycle, the censuses, and as its last line one JSON object (cycles, faults,
 * durations, censuses, leaks).
 *
 * @module
 */
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { Sandbox } from '../../src/sandbox/sandbox.js';
import { Dir } from '../../src/host/tree.js';
import type { SandboxConfig } from '../../src/sandbox/config.js';
import { StandInHypervisor, cleanupStandIn, standInFiles } from '../privileged/stand-in-hypervisor.js';

const CYCLE = fileURLToPath(new URL('./cycle.ts', import.meta.url));

/** The faults, and how often each is drawn. */
const FAULTS = ['none', 'kill-orchestrator', 'kill-vm', 'kill-virtiofsd', 'stop-vm'] as const;
type Fault = (typeof FAULTS)[number];

/** Options of {@link runSoak}. */
export interface SoakOptions {
  cycles: number;
  /** The stand-in hypervisor (the agent on the host) instead of QEMU: faster, no network. */
  standIn?: boolean;
  /** Seed of the fault draws (default random); the same seed draws the same faults. */
  seed?: number;
  /** Where to print (default stdout). */
  log?: (line: string) => void;
  /** Ends the soak after the cycle under way (its clean-up and last census still run). */
  signal?: AbortSignal;
}

/** What the host holds, by kind (see {@link census}). */
export type Census = Record<string, number>;

/** What a soak found. */
export interface SoakReport {
  cycles: number;
  seed: number;
  faults: Record<Fault, number>;
  /** Cycles whose process finished its life (no fault, or a fault that came too late to matter). */
  completed: number;
  /** Median and max duration of a cycle, ms (the cleanup included). */
  cycleMs: { median: number; max: number };
  censuses: { cycle: number; census: Census }[];
  /** Kinds whose count grew over the first census. */
  leaks: Record<string, [number, number]>;
  /** Deletes after a cycle that failed (must be none). */
  deleteFailures: string[];
}

/** A small seeded generator (mulberry32): the fault sequence of a seed is reproducible. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function lines(command: string, args: string[]): string[] {
  try {
    return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n').filter(Boolean);
  } catch {
    return [];
  }
}

function countFiles(dir: string): number {
  let n = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) if (!entry.isDirectory()) n++;
  return n;
}

/**
 * What the host holds that the soak's sandboxes could leak: this process's fds; the mounts, daemon
 * processes and files under the soak's folder; the sandboxes' network namespaces, the links on the
 * soak's bridge and its host-local reservations; the host's hugepages.
 */
export function census(dir: string, bridge: string): Census {
  const cmdline = (pid: string): string => {
    try {
      return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    } catch {
      return '';
    }
  };
  const stateDir = path.join(dir, 'state');
  const ipamDir = path.join(dir, 'ipam');
  const mine = fs.readdirSync('/proc').filter((p) => /^\d+$/u.test(p) && Number(p) !== process.pid && cmdline(p).includes(`${dir}/`) && !cmdline(p).includes('cycle.ts'));
  return {
    fds: fs.readdirSync('/proc/self/fd').length,
    mounts: fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.split(' ')[4]?.startsWith(`${dir}/`)).length,
    daemons: mine.length,
    netns: lines('ip', ['netns', 'list']).filter((l) => l.startsWith('vmpod-soak-')).length,
    links: lines('ip', ['-o', 'link', 'show', 'master', bridge]).length,
    hugepages: Number(fs.readFileSync('/proc/sys/vm/nr_hugepages', 'utf8')),
    ipam: fs.existsSync(ipamDir) ? countFiles(ipamDir) : 0,
    stateFiles: fs.existsSync(stateDir) ? countFiles(stateDir) : 0,
  };
}

/** The record of sandbox `id`, if readable. */
function recordOf(stateDir: string, id: string): { boot?: { vm?: { pid: number } }; resources?: { sharedFs?: { virtiofsd?: { pid: number } } } } | undefined {
  try {
    return JSON.parse(fs.readFileSync(path.join(stateDir, 'sandboxes', id, 'state.json'), 'utf8'));
  } catch {
    return undefined;
  }
}

function kill(pid: number | undefined, signal: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

/** Runs the soak (see the module description). */
export async function runSoak(options: SoakOptions): Promise<SoakReport> {
  const log = options.log ?? ((line: string) => process.stdout.write(`${line}\n`));
  const seed = options.seed ?? randomBytes(4).readUInt32BE();
  const draw = random(seed);
  const tag = `vt${randomBytes(2).toString('hex')}`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${tag}-soak-`));
  const stateDir = path.join(dir, 'state');
  const ipamDir = path.join(dir, 'ipam');
  const bridge = `${tag}b0`;
  const standIn = options.standIn === true;
  const files = standIn ? standInFiles() : undefined;
  const bundle = path.join(dir, 'bundle');
  fs.mkdirSync(path.join(bundle, 'rootfs', 'bin'), { recursive: true });
  fs.mkdirSync(path.join(bundle, 'rootfs', 'proc'));
  fs.copyFileSync('/bin/busybox', path.join(bundle, 'rootfs', 'bin', 'busybox'));
  for (const applet of ['sh', 'sleep', 'echo']) fs.symlinkSync('busybox', path.join(bundle, 'rootfs', 'bin', applet));
  fs.writeFileSync(
    path.join(bundle, 'config.json'),
    JSON.stringify({
      ociVersion: '1.0.2',
      process: { args: ['sleep', '300'], cwd: '/', env: ['PATH=/bin'] },
      root: { path: 'rootfs' },
      mounts: [{ destination: '/proc', type: 'proc', source: 'proc' }],
      linux: { namespaces: [{ type: 'pid' }, { type: 'mount' }] },
    }),
  );
  const octet = (Number.parseInt(tag.slice(2), 16) % 200) + 20;
  const extra: Partial<SandboxConfig> = standIn
    ? {}
    : {
        network: {
          cni: [
            {
              config: {
                cniVersion: '1.0.0',
                name: `${tag}-soak`,
                plugins: [{ type: 'bridge', bridge, isGateway: false, ipMasq: false, ipam: { type: 'host-local', ranges: [[{ subnet: `10.199.${octet}.0/24` }]], dataDir: ipamDir } }],
              },
            },
          ],
        },
      };
  const hypervisor = standIn ? new StandInHypervisor() : undefined;
  // The addon's worker thread keeps an fd of the host's network namespace from its first job on:
  // start it now, so that the first census has it.
  (await Dir.open(dir)).close();
  const faults = Object.fromEntries(FAULTS.map((f) => [f, 0])) as Record<Fault, number>;
  const durations: number[] = [];
  const censuses: { cycle: number; census: Census }[] = [];
  const deleteFailures: string[] = [];
  let completed = 0;
  let typical = standIn ? 800 : 6000; // a cycle's length, for when to strike (updated from clean cycles)
  try {
    for (let cycle = 0; cycle < options.cycles && !options.signal?.aborted; cycle++) {
      // The first census after one cycle: what a first use opens for good (the addon's worker, a
      // CNI cache) is not a leak.
      if (cycle % 10 === 1 || (cycle === 0 && options.cycles === 1)) censuses.push({ cycle, census: census(dir, bridge) });
      const id = `soak-${cycle}`;
      const fault: Fault = cycle === 0 ? 'none' : FAULTS[Math.floor(draw() * FAULTS.length)]!;
      const at = Math.floor(draw() * typical);
      faults[fault]++;
      const started = Date.now();
      const child = spawn(process.execPath, ['--import', 'tsx', CYCLE, JSON.stringify({ stateDir, id, bundle, standIn, extra })], {
        env: { ...process.env, ...(files ? { VMPOD_STAND_IN_DIR: files.dir } : {}) },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      let err = '';
      child.stdout.on('data', (d: Buffer) => (out += d));
      child.stderr.on('data', (d: Buffer) => (err += d));
      const exited = new Promise<void>((resolve) => child.on('close', () => resolve()));
      const strike = setTimeout(() => {
        const record = recordOf(stateDir, id);
        if (fault === 'kill-orchestrator') kill(child.pid, 'SIGKILL');
        if (fault === 'kill-vm') kill(record?.boot?.vm?.pid, 'SIGKILL');
        if (fault === 'kill-virtiofsd') kill(record?.resources?.sharedFs?.virtiofsd?.pid, 'SIGKILL');
        if (fault === 'stop-vm') kill(record?.boot?.vm?.pid, 'SIGSTOP');
      }, at);
      // The soak's own delete: after the cycle, or, for a cycle stuck on a stopped VM, 5 s after
      // the fault while the cycle still waits (a delete wins over a start or a call in progress).
      let removal: Promise<void> | undefined;
      const remove = (): Promise<void> =>
        (removal ??= (async () => {
          try {
            const warnings = await Sandbox.remove(id, { stateDir, force: true, ...(hypervisor ? { hypervisor } : {}) });
            if (warnings.length > 0) deleteFailures.push(`${id}: ${warnings.join('; ')}`);
          } catch (error) {
            if ((error as { code?: string }).code !== 'ERR_VMPOD_NOT_FOUND') deleteFailures.push(`${id}: ${(error as Error).message}`);
          }
        })());
      const overtake = fault === 'stop-vm' ? setTimeout(() => void remove(), at + 5_000) : undefined;
      // The cycle ends once its VM is gone (its calls have deadlines too); one stuck longer is killed.
      const watchdog = setTimeout(() => kill(child.pid, 'SIGKILL'), 120_000);
      await exited;
      const overtaken = removal !== undefined;
      clearTimeout(strike);
      clearTimeout(overtake);
      clearTimeout(watchdog);
      const done = out.includes('done');
      if (done) completed++;
      if (done && fault === 'none') typical = Math.max(200, Date.now() - started);
      await remove();
      const ms = Date.now() - started;
      durations.push(ms);
      log(`cycle ${cycle}: ${fault} at ${at} ms -> ${done ? 'done' : 'cut short'}${overtaken ? ', deleted while it ran' : ''} (${ms} ms)${!done && fault === 'none' ? `\n${err.slice(-1500)}` : ''}`);
    }
    censuses.push({ cycle: durations.length, census: census(dir, bridge) });
  } finally {
    if (standIn) await cleanupStandIn();
    for (const l of lines('ip', ['-o', 'link', 'show'])) {
      const name = /^\d+: ([^:@]+)/u.exec(l)?.[1];
      if (name?.startsWith(tag)) lines('ip', ['link', 'del', name]);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const first = censuses[0]!.census;
  const last = censuses.at(-1)!.census;
  const leaks: Record<string, [number, number]> = {};
  for (const [kind, before] of Object.entries(first)) if ((last[kind] ?? 0) > before) leaks[kind] = [before, last[kind]!];
  const sorted = [...durations].sort((a, b) => a - b);
  const report: SoakReport = {
    cycles: durations.length,
    seed,
    faults,
    completed,
    cycleMs: { median: sorted[Math.floor(sorted.length / 2)] ?? 0, max: sorted.at(-1) ?? 0 },
    censuses,
    leaks,
    deleteFailures,
  };
  for (const c of censuses) log(`census after ${c.cycle} cycles: ${Object.entries(c.census).map(([k, v]) => `${k}=${v}`).join(' ')}`);
  return report;
}

// `npm run soak -- N [--stand-in] [--seed S]`
if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const argv = process.argv.slice(2);
  const cycles = Number(argv.find((a) => /^\d+$/u.test(a)) ?? '20');
  const seedAt = argv.indexOf('--seed');
  // Ctrl-C or SIGTERM: the cycle under way ends, then the soak cleans up and reports.
  const stop = new AbortController();
  for (const name of ['SIGINT', 'SIGTERM'] as const) process.once(name, () => stop.abort());
  const report = await runSoak({
    cycles,
    signal: stop.signal,
    standIn: argv.includes('--stand-in'),
    ...(seedAt >= 0 ? { seed: Number(argv[seedAt + 1]) } : {}),
  });
  process.stdout.write(`${JSON.stringify({ soak: report.cycles, seed: report.seed, faults: report.faults, completed: report.completed, cycle_ms: report.cycleMs, leaks: report.leaks, delete_failures: report.deleteFailures, censuses: report.censuses })}\n`);
  process.exit(Object.keys(report.leaks).length > 0 || report.deleteFailures.length > 0 ? 1 : 0);
}
