/**
 * Benchmark runner: `npm run bench -- NAME [ARGS...]` runs benchmarks/NAME.ts through tsx (no
 * build step). A benchmark module's default export is `async function main(args: string[])`;
 * it prints a readable table and, as its very last line, one JSON object (see docs/benchmarks.md
 * and benchmarks/lib/report.ts).
 */
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const dir = path.dirname(fileURLToPath(import.meta.url));
const available = readdirSync(dir)
  .filter((f) => f.endsWith('.ts') && f !== 'run.ts')
  .map((f) => f.slice(0, -'.ts'.length))
  .sort();
const [name, ...args] = process.argv.slice(2);
if (name === undefined || !available.includes(name)) {
  console.error(`usage: npm run bench -- NAME [ARGS...]\nbenchmarks: ${available.join(', ') || '(none)'}`);
  process.exit(2);
}
const module = (await import(pathToFileURL(path.join(dir, `${name}.ts`)).href)) as { default?: unknown };
if (typeof module.default !== 'function') {
  console.error(`benchmarks/${name}.ts must export default async function main(args: string[])`);
  process.exit(2);
}
await (module.default as (args: string[]) => Promise<void>)(args);
