/**
 * Host processes as benchmarks see them: who mentions a path, whose children they have, and how
 * much memory they take (PSS from /proc/PID/smaps_rollup, which splits shared pages fairly
 * between the processes mapping them, so a sum over processes counts each page once).
 */
import fs from 'node:fs';

function pids(): number[] {
  return fs
    .readdirSync('/proc')
    .filter((n) => /^\d+$/u.test(n))
    .map(Number);
}

function parentOf(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 4 (ppid) follows the parenthesised command name, which may contain spaces.
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return undefined; // gone meanwhile
  }
}

/** This process and its ancestors (npm, tsx, a shell: their command lines may name our paths). */
function ourselves(): Set<number> {
  const own = new Set<number>();
  for (let pid: number | undefined = process.pid; pid !== undefined && pid > 0 && !own.has(pid); pid = parentOf(pid)) own.add(pid);
  return own;
}

/** Pids, other than this process and its ancestors, whose command line contains `text`. */
export function processesMentioning(text: string): number[] {
  const own = ourselves();
  const out: number[] = [];
  for (const pid of pids()) {
    if (own.has(pid)) continue;
    let cmdline: string;
    try {
      cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    } catch {
      continue; // gone meanwhile
    }
    if (cmdline.includes(text)) out.push(pid);
  }
  return out;
}

/** `roots` and all their descendants (by parent pid). */
export function withDescendants(roots: readonly number[]): number[] {
  const children = new Map<number, number[]>();
  for (const pid of pids()) {
    const ppid = parentOf(pid);
    if (ppid !== undefined) children.set(ppid, [...(children.get(ppid) ?? []), pid]);
  }
  const seen = new Set<number>();
  const todo = [...roots];
  while (todo.length > 0) {
    const pid = todo.pop()!;
    if (seen.has(pid)) continue;
    seen.add(pid);
    todo.push(...(children.get(pid) ?? []));
  }
  return [...seen].sort((a, b) => a - b);
}

/** Memory of one process in KiB, from /proc/PID/smaps_rollup. */
export interface ProcessMemory {
  pid: number;
  /** /proc/PID/comm. */
  name: string;
  pssKiB: number;
  rssKiB: number;
  /** The parts of PSS: anonymous memory, file pages (binaries, libraries, a mapped kernel image), shmem (memfd guest RAM). */
  pssAnonKiB: number;
  pssFileKiB: number;
  pssShmemKiB: number;
}

/** PSS and RSS of `pid`, or undefined when it is gone. */
export function processMemory(pid: number): ProcessMemory | undefined {
  try {
    const rollup = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'mu').exec(rollup)?.[1] ?? NaN);
    const name = fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    return {
      pid,
      name,
      pssKiB: field('Pss'),
      rssKiB: field('Rss'),
      pssAnonKiB: field('Pss_Anon'),
      pssFileKiB: field('Pss_File'),
      pssShmemKiB: field('Pss_Shmem'),
    };
  } catch {
    return undefined;
  }
}

/** Processes other than `except` that map `file` (e.g. other VMs booting the same kernel image). */
export function processesMapping(file: string, except: readonly number[] = []): number[] {
  const out: number[] = [];
  for (const pid of pids()) {
    if (except.includes(pid)) continue;
    try {
      if (fs.readFileSync(`/proc/${pid}/maps`, 'utf8').includes(` ${file}\n`)) out.push(pid);
    } catch {
      // gone meanwhile, or a kernel thread
    }
  }
  return out;
}

/** SIGKILLs `pids`, ignoring those already gone. */
export function killAll(list: readonly number[]): void {
  for (const pid of list) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}
