// Coverage runs of the native code (docs/testing.md, "Coverage"; VMPOD_NATIVE_COVERAGE=1): a
// test worker is ended with SIGTERM, which skips the exit handlers, and with them gcov's write
// of the addon's profile (.gcda). Such a run makes SIGTERM an ordinary exit instead.
const flag = Symbol.for('vmpod.nativeCoverageExit');
const state = globalThis as { [flag]?: boolean };
if (process.env['VMPOD_NATIVE_COVERAGE'] === '1' && state[flag] !== true) {
  state[flag] = true;
  process.on('SIGTERM', () => process.exit());
}
