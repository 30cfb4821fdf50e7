// The Vitest configuration Stryker runs (stryker.config.mjs): the unit tests of the mutated modules
// (Stryker runs them in worker threads, where some other unit tests cannot set process.umask()),
// in a fixed order, with the fuzz tests at 100 iterations (their invariants, not their floors).
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    root: fileURLToPath(new URL('..', import.meta.url)),
    include: [
      'test/unit/agent-*.test.ts',
      'test/unit/state-*.test.ts',
      'test/unit/cni-result.test.ts',
      'test/unit/share-resolve.test.ts',
    ],
    testTimeout: 60_000,
    env: { VMPOD_FUZZ_ITERATIONS: '100' },
  },
});
