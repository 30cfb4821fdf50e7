/**
 * Global setup of both projects: prints the seed that shuffled the files and tests of this run
 * (see vitest.config.ts), so that a failure that depends on the order can be replayed with
 * `VMPOD_TEST_SEED=<seed> npm test` (vitest's own --sequence.seed drops the shuffle of the projects:
 * use the variable).
 */
import type { TestProject } from 'vitest/node';

export default function printSeed(project: TestProject): void {
  const { shuffle, seed } = project.config.sequence;
  const order = shuffle ? `files and tests shuffled with seed ${seed}` : `file order (not shuffled), seed ${seed}`;
  process.stdout.write(`[${project.name}] test order: ${order}; replay with VMPOD_TEST_SEED=${seed}\n`);
}
