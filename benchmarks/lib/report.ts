/**
 * Shared reporting for benchmarks (docs/benchmarks.md): median/min/max per variant,
 * ratios of medians against the peers, a readable table, and one final JSON line.
 */

export interface Summary {
  median: number;
  min: number;
  max: number;
}

/** Median, min and max of samples (rounded to 3 decimals). */
export function summarize(samples: readonly number[]): Summary {
  if (samples.length === 0) throw new Error('no samples');
  const sorted = [...samples].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  const median = sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
  const round = (v: number): number => Math.round(v * 1000) / 1000;
  return { median: round(median), min: round(sorted[0] as number), max: round(sorted[sorted.length - 1] as number) };
}

/** Collects samples per variant. */
export class Samples {
  readonly #data = new Map<string, number[]>();

  add(variant: string, value: number): void {
    const list = this.#data.get(variant) ?? [];
    list.push(value);
    this.#data.set(variant, list);
  }

  results(): Record<string, Summary> {
    return Object.fromEntries([...this.#data].map(([k, v]) => [k, summarize(v)]));
  }
}

/** `A/B` -> median(A)/median(B), rounded to 2 decimals. */
export function ratios(results: Record<string, Summary>, pairs: ReadonlyArray<readonly [string, string]>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [a, b] of pairs) {
    const x = results[a];
    const y = results[b];
    if (x && y && y.median > 0) out[`${a}/${b}`] = Math.round((x.median / y.median) * 100) / 100;
  }
  return out;
}

/** Prints the readable table, then the final JSON line. */
export function report(bench: string, unit: string, runs: number, results: Record<string, Summary>, ratioValues: Record<string, number>, extra: Record<string, unknown> = {}): void {
  const width = Math.max(...Object.keys(results).map((k) => k.length), 8);
  console.log(`\n${bench}: ${runs} interleaved runs (${unit})`);
  console.log(`${'variant'.padEnd(width)}  ${'median'.padStart(10)}  ${'min'.padStart(10)}  ${'max'.padStart(10)}`);
  for (const [k, s] of Object.entries(results)) {
    console.log(`${k.padEnd(width)}  ${s.median.toFixed(3).padStart(10)}  ${s.min.toFixed(3).padStart(10)}  ${s.max.toFixed(3).padStart(10)}`);
  }
  for (const [k, v] of Object.entries(ratioValues)) console.log(`${k}: ${v}x`);
  console.log(JSON.stringify({ bench, unit, runs, results, ratios: ratioValues, ...extra }));
}
