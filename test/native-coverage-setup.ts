// Coverage runs of the native code (docs/testing.md, "Coverage"; VMPOD_NATIVE_COVERAGE=1).
// libgcov writes the addon's profile (.gcda) when the process exits, and only then: a test worker
// ended with SIGTERM skips the exit handlers, and a worker killed outright writes nothing. Such a
// run makes SIGTERM an ordinary exit, and after each test file asks the coverage addon to add
// what it counted so far to the profile (coverageFlush: __gcov_dump, then __gcov_reset).
import { createRequire } from 'node:module';
import { afterAll } from 'vitest';

const flag = Symbol.for('vmpod.nativeCoverageExit');
const state = globalThis as { [flag]?: boolean };
const coverage = process.env['VMPOD_NATIVE_COVERAGE'] === '1';
if (coverage && state[flag] !== true) {
  state[flag] = true;
  process.on('SIGTERM', () => process.exit());
}
if (coverage && process.env['VMPOD_ADDON']) {
  const addonPath = process.env['VMPOD_ADDON'];
  afterAll(() => {
    // The same path as src/native.ts loads: Node gives back the module already loaded.
    const addon = createRequire(import.meta.url)(addonPath) as { coverageFlush?: () => void };
    if (typeof addon.coverageFlush !== 'function') throw new Error(`${addonPath} is not a coverage build (no coverageFlush)`);
    addon.coverageFlush();
  });
}
