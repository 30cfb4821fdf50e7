/**
 * Measures the least guest RAM that boots a sandbox and runs a container, for one machine type,
 * by bisection (how MIN_MEMORY_MIB in src/sandbox/config.ts was found; run it again when the
 * guest kernel or initramfs changes). Needs root and QEMU, as the privileged tests do:
 *
 *   node --import tsx test/privileged/sandbox/memory-bisect.ts q35 [LOW] [HIGH]
 *
 * LOW (default 1) must fail and HIGH (default 256) must boot. The config's own minimum is
 * bypassed by telling the guest kernel how much it has (`mem=NM` on its command line) in a
 * sandbox of HIGH MiB; a boot counts when a container of the builtin rootfs printed "ok". Each
 * trial's sandbox has a state directory of its own under the system's temporary folder, deleted
 * after it.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { collect } from './fixture.js';

type Machine = 'q35' | 'microvm';

/** Boots a sandbox whose guest sees `mib` MiB and runs one container; says whether it worked. */
async function boots(machine: Machine, mib: number, high: number): Promise<{ ok: boolean; detail: string }> {
  const stateDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-bisect-'));
  let sandbox: Sandbox | undefined;
  try {
    sandbox = await Sandbox.create({ stateDir, machine, memoryMiB: high, guest: { kernelArgs: [`mem=${mib}M`] } });
    await sandbox.start({ timeoutMs: 180_000 });
    const c = await sandbox.createContainer({ process: { args: ['sh', '-c', 'echo ok; head -2 /proc/meminfo'] } });
    const out = collect(c.stdout);
    await c.start();
    const status = await c.wait();
    const text = (await out).toString();
    return { ok: status.exitCode === 0 && text.startsWith('ok\n'), detail: text.replace(/\s+/gu, ' ').trim() };
  } catch (error) {
    return { ok: false, detail: (error as Error).message.split('\n')[0]! };
  } finally {
    await sandbox?.delete({ force: true }).catch((error: unknown) => console.error(`delete failed: ${String(error)}`));
    await fs.rm(stateDir, { recursive: true, force: true });
  }
}

const machine = (process.argv[2] ?? 'q35') as Machine;
if (machine !== 'q35' && machine !== 'microvm') throw new Error('machine: q35 or microvm');
let low = Number(process.argv[3] ?? 1);
let high = Number(process.argv[4] ?? 256);
const top = high;
for (const [mib, want] of [[high, true], [low, false]] as const) {
  const r = await boots(machine, mib, top);
  console.log(`${machine} ${mib} MiB: ${r.ok ? 'boots' : 'fails'} (${r.detail})`);
  if (r.ok !== want) throw new Error(`${mib} MiB should ${want ? 'boot' : 'fail'}`);
}
while (high - low > 1) {
  const mid = Math.floor((low + high) / 2);
  const r = await boots(machine, mid, top);
  console.log(`${machine} ${mid} MiB: ${r.ok ? 'boots' : 'fails'} (${r.detail})`);
  if (r.ok) high = mid;
  else low = mid;
}
console.log(`${machine}: boots with ${high} MiB, fails with ${low}`);
