/**
 * Crash points for tests: with `VMPOD_FAILPOINT` set, the process kills itself with SIGKILL at
 * the named point, as a crash there would; unset (always, outside tests), every call is a
 * comparison with undefined.
 *
 * - `write:N`: just before the N-th write of a sandbox record by this process;
 * - `written:N`: just after it;
 * - `spawned:NAME`: just after a daemon (`qemu-system-x86_64`, `virtiofsd`, `vmpod-logger`, ...)
 *   was spawned, before anything recorded it.
 *
 * Every host object is recorded before it is made, so crashing at every record write (before and
 * after) and after every spawn walks every step of an operation (test/privileged/crash-points).
 *
 * @internal
 * @module
 */

const target = process.env['VMPOD_FAILPOINT'];
let writes = 0;

function crash(): never {
  process.kill(process.pid, 'SIGKILL');
  // SIGKILL is not delivered synchronously on every platform: never go on past a crash point.
  for (;;) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1000);
}

/** Before a record write (counts it). */
export function beforeRecordWrite(): void {
  writes++;
  if (target !== undefined && target === `write:${writes}`) crash();
}

/** After a record write. */
export function afterRecordWrite(): void {
  if (target !== undefined && target === `written:${writes}`) crash();
}

/** After a daemon was spawned, before it is recorded. */
export function afterSpawn(name: string): void {
  if (target !== undefined && target === `spawned:${name}`) crash();
}

/** How many record writes this process made (for a test's report of where it crashed). */
export function recordWrites(): number {
  return writes;
}
