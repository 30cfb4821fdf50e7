/**
 * Ctrl-C of a library script (issue 10, item 7): a TypeScript script in a process of its own,
 * using abortOnSignals() and `await using`, gets SIGINT while `sandbox.start()` is booting the
 * VM (the test waits until QEMU exists), SIGTERM while it waits for a container, or SIGINT
 * twice. After it exits there must be nothing left: no QEMU, no virtiofsd, no log writer, no
 * mount, no state. Without the helper, Node's default SIGINT ends the script at once and the
 * booting VM, its daemons and its mounts stay until `vmpod delete -f`.
 */
import fs from 'node:fs/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { deleteAllAndCheck, expectNothingLeft, makeStateDir, nodeScript, processesMentioning, skipReason } from './fixture.js';

/** Resolves once a process whose command line mentions `text` and `program` runs (QEMU of the boot). */
async function waitForProcess(text: string, program: string, deadlineMs = 120_000): Promise<number> {
  const until = Date.now() + deadlineMs;
  while (Date.now() < until) {
    for (const pid of await processesMentioning(text)) {
      const cmdline = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
      if (cmdline.split('\0')[0]?.includes(program)) return pid;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`no ${program} process mentioning ${text} within ${deadlineMs} ms`);
}

describe.skipIf(skipReason)(`Ctrl-C of a script${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;

  beforeEach(async () => {
    stateDir = await makeStateDir();
  });

  afterEach(() => deleteAllAndCheck(stateDir));

  it('SIGINT during sandbox.start(): the start is aborted, `await using` deletes the sandbox, exit 130, nothing left', async () => {
    const script = nodeScript(
      stateDir,
      `const signal = vmpod.abortOnSignals();
await using sandbox = await vmpod.Sandbox.create({ stateDir: ${JSON.stringify(stateDir)}, id: 'sigint', memoryMiB: 256 }, { signal });
console.log('starting');
await sandbox.start({ signal });
console.log('started');`,
    );
    // QEMU exists: the boot is under way (and its virtiofsd, log writer and share mounts too).
    const qemu = await waitForProcess(stateDir, 'qemu-system');
    expect(script.output()).toBe('starting\n');
    expect((await Sandbox.list({ stateDir })).map((s) => s.state)).toEqual(['starting']);
    script.child.kill('SIGINT');
    const result = await script.result;
    // Nothing left once the script has exited: the VM, its daemons, mounts and state are gone.
    await expect(fs.stat(`/proc/${qemu}`), 'QEMU still runs').rejects.toMatchObject({ code: 'ENOENT' });
    expect(await Sandbox.list({ stateDir })).toEqual([]);
    await expectNothingLeft(stateDir);
    expect(result.stdout).toBe('starting\n'); // start() never finished
    expect(result.stderr).toContain('SIGINT: cancelling and cleaning up');
    expect(result.stderr).toMatch(/AbortError: .*was aborted/u);
    expect(result.code).toBe(130);
    stateDir = await makeStateDir(); // afterEach checks a fresh one
  });

  it('SIGTERM while the script waits for a container: the wait is aborted, container and sandbox deleted, exit 143', async () => {
    const script = nodeScript(
      stateDir,
      `const signal = vmpod.abortOnSignals();
await using sandbox = await vmpod.Sandbox.create({ stateDir: ${JSON.stringify(stateDir)}, id: 'sigterm', memoryMiB: 256 }, { signal });
await sandbox.start({ signal });
await using c = await sandbox.createContainer({ signal, process: { args: ['sleep', '1000'] } });
await c.start({ signal });
console.log('waiting');
await c.wait({ signal });
console.log('exited');`,
    );
    for (let i = 0; i < 6000 && !script.output().includes('waiting'); i++) await new Promise((r) => setTimeout(r, 20));
    expect(script.output()).toBe('waiting\n');
    script.child.kill('SIGTERM');
    const result = await script.result;
    expect(result.stdout).toBe('waiting\n');
    expect(result.code).toBe(143);
    expect(await Sandbox.list({ stateDir })).toEqual([]);
    await expectNothingLeft(stateDir);
    stateDir = await makeStateDir();
  });

  it('a second SIGINT exits at once; what is left is recorded and Sandbox.remove (vmpod delete -f) removes it', async () => {
    const script = nodeScript(
      stateDir,
      `const signal = vmpod.abortOnSignals();
await using sandbox = await vmpod.Sandbox.create({ stateDir: ${JSON.stringify(stateDir)}, id: 'twice', memoryMiB: 256 }, { signal });
await sandbox.start({ signal });
console.log('started');
await new Promise((resolve) => signal.addEventListener('abort', resolve));
console.log('aborted');`,
    );
    for (let i = 0; i < 6000 && !script.output().includes('started'); i++) await new Promise((r) => setTimeout(r, 20));
    expect(script.output()).toBe('started\n');
    script.child.kill('SIGINT');
    // The second signal as soon as the first was taken: the disposal (stop, delete) is under way.
    let stderr = '';
    script.child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (stderr.includes('cancelling')) script.child.kill('SIGINT');
    });
    const result = await script.result;
    expect(result.code).toBe(130);
    expect(result.stderr).toContain('SIGINT after SIGINT: exiting now; "vmpod delete -f ID" removes what is left');
    // Whatever the interrupted disposal left, the record knows: remove finishes it.
    for (const info of await Sandbox.list({ stateDir })) await Sandbox.remove(info.id, { stateDir, force: true });
    await expectNothingLeft(stateDir);
    stateDir = await makeStateDir();
  });
});
