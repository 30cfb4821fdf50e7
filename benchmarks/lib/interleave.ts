/**
 * The measuring loop of every benchmark (docs/benchmarks.md): one warm-up round that is not counted, then `runs`
 * rounds, each running every variant once in order (A B A B ...). A variant returns one value,
 * or several named values (e.g. a setup and a teardown time), each collected under its name.
 */
import { Samples } from './report.js';

/** A variant: its name (for progress) and one measurement. */
export type Variant = readonly [name: string, measure: () => Promise<number | Record<string, number>>];

export interface InterleaveOptions {
  /** Checked between measurements: an interrupted benchmark stops there. */
  signal?: AbortSignal;
  /** Decimals of the progress lines (default 1). */
  digits?: number;
}

/** Runs the rounds and returns the samples; progress goes to stderr, one line per round. */
export async function interleave(runs: number, variants: readonly Variant[], options: InterleaveOptions = {}): Promise<Samples> {
  const samples = new Samples();
  for (let round = 0; round <= runs; round++) {
    const line: string[] = [];
    for (const [name, measure] of variants) {
      options.signal?.throwIfAborted();
      const value = await measure();
      const values = typeof value === 'number' ? { [name]: value } : value;
      for (const [key, v] of Object.entries(values)) {
        if (round > 0) samples.add(key, v);
        line.push(`${key}=${v.toFixed(options.digits ?? 1)}`);
      }
    }
    process.stderr.write(`  ${round === 0 ? 'warm-up' : `${round}/${runs}`}: ${line.join(' ')}\n`);
  }
  return samples;
}

/**
 * Parses `[RUNS] [--name value ...]`: the run count (a positive integer, default `runs`) and
 * the named options given in `defaults` (strings). Unknown options are refused.
 */
export function benchArgs<K extends string>(args: readonly string[], runs: number, defaults: Record<K, string>, usage: string): { runs: number; options: Record<K, string> } {
  const options = { ...defaults };
  let count = runs;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg.startsWith('--')) {
      const key = arg.slice(2) as K;
      const value = args[i + 1];
      if (!(key in defaults) || value === undefined) throw new Error(`bad option ${arg}\n${usage}`);
      options[key] = value;
      i++;
    } else {
      count = Number(arg);
      if (!Number.isInteger(count) || count < 1) throw new Error(`RUNS must be a positive integer, not ${JSON.stringify(arg)}\n${usage}`);
    }
  }
  return { runs: count, options };
}
