// Mutation testing with Stryker: `npm run mutation` (all the modules below), or one module with
// `npm run mutation -- --mutate src/agent/framing.ts`. Not part of CI (slow); the scores and the
// surviving mutants are in docs/testing.md, "Mutation testing". Runs the unit tests only, through
// test/stryker.vitest.config.ts, in a sandbox copy of the repository (never in place).
export default {
  testRunner: 'vitest',
  plugins: ['@stryker-mutator/vitest-runner'],
  vitest: { configFile: 'test/stryker.vitest.config.ts', related: true },
  mutate: [
    'src/agent/framing.ts', // framing
    'src/agent/stdio.ts', // stdio credit
    'src/state/store.ts', // the state store
    'src/state/lock.ts', // and its locks
    'src/network/cni/result.ts', // the CNI result parser
    'src/sandbox/resources/share.ts', // the share's path handling (test/unit/share-resolve.test.ts)
  ],
  coverageAnalysis: 'perTest',
  // The sandbox needs the sources, the tests and the addon (the state lock uses it), not the rest.
  ignorePatterns: ['build/**', '!build/Release/vmpod.node', 'dist', 'docs', 'benchmarks', 'native', '.tsc-test', 'coverage', '.cache'],
  concurrency: 1,
  timeoutMS: 30_000,
  reporters: ['clear-text', 'progress'],
  cleanTempDir: 'always',
};
