/**
 * The lifecycle works from the record alone, on real VMs: with QEMU stopped (SIGSTOP: neither its
 * QMP monitor nor the guest answer) `stop` and `vmpod delete -f` finish within seconds and leave
 * nothing; a sandbox whose record is unreadable is still deleted (its VM, share and log writer
 * found without it); the console log goes through a capped writer.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { isAlive } from '../../../src/host/process.js';
import { deleteAllAndCheck, makeStateDir, nodeScript, processesMentioning, skipReason, vmpod } from './fixture.js';

describe.skipIf(skipReason)(`a silent guest, an unreadable record${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;

  beforeEach(async () => {
    stateDir = await makeStateDir();
  });
  afterEach(() => deleteAllAndCheck(stateDir));

  it('vmpod delete -f finishes within seconds when QEMU is stopped (SIGSTOP), and leaves nothing', async () => {
    const sandbox = await Sandbox.create({ stateDir, id: 'frozen' });
    await sandbox.start();
    const vm = (await sandbox.record()).boot!.vm!;
    sandbox.detach();
    process.kill(vm.pid, 'SIGSTOP');
    const started = Date.now();
    const result = await vmpod(stateDir, ['delete', '-f', 'frozen']);
    const elapsed = Date.now() - started;
    expect(result).toMatchObject({ code: 0, stderr: '' });
    // The agent (3 s) and QMP (2 s) get a few seconds each before the VM is killed from the record.
    expect(elapsed).toBeLessThan(30_000);
    expect(isAlive(vm)).toBe(false);
    expect(await Sandbox.list({ stateDir })).toEqual([]);
  });

  it('stop() from another process finishes when QEMU is stopped, and says the VM was killed', async () => {
    const sandbox = await Sandbox.create({ stateDir, id: 'frozen2' });
    await sandbox.start();
    const vm = (await sandbox.record()).boot!.vm!;
    process.kill(vm.pid, 'SIGSTOP');
    const stopper = nodeScript(
      stateDir,
      `const s = await vmpod.Sandbox.attach('frozen2', { stateDir: ${JSON.stringify(stateDir)} });
       await s.stop({ timeoutMs: 2000 });
       console.log(JSON.stringify((await s.record()).stopReason));`,
    );
    const out = await stopper.result;
    expect(out.code).toBe(0);
    expect(JSON.parse(out.stdout.trim())).toEqual({ reason: 'requested', detail: 'stop: the guest did not power off in time, the hypervisor was killed' });
    expect(isAlive(vm)).toBe(false);
    expect((await sandbox.record()).state).toBe('stopped');
    await sandbox.delete();
  });

  it('deletes a running sandbox whose record is unreadable: its VM, virtiofsd, log writer, mounts and folders', async () => {
    const sandbox = await Sandbox.create({ stateDir, id: 'garbled' });
    await sandbox.start();
    const record = await sandbox.record();
    const vm = record.boot!.vm!;
    const logger = record.boot!.logger!;
    const bootDir = record.boot!.dir;
    expect(isAlive(logger)).toBe(true);
    expect(await fs.readFile(sandbox.consoleLog, 'utf8')).toMatch(/SeaBIOS|vmpod-agent/u); // the console, through the log writer
    sandbox.detach();
    await fs.writeFile(path.join(sandbox.dir, 'state.json'), '{ "format": 2, "id": "garbled", "sta');
    const result = await vmpod(stateDir, ['delete', '-f', 'garbled']);
    expect(result.code).toBe(0);
    expect(result.stderr).toMatch(/record was unreadable|not valid JSON/u);
    expect(result.stderr).toMatch(/could not be known/u);
    expect(isAlive(vm)).toBe(false);
    expect(isAlive(logger)).toBe(false);
    expect(await processesMentioning(sandbox.dir)).toEqual([]);
    await expect(fs.stat(bootDir)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
