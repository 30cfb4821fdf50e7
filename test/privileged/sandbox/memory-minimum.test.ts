/**
 * The least guest RAM a sandbox may have (MIN_MEMORY_MIB) boots the default guest and runs a
 * container, on each machine type; less is refused at create(), before anything is made (64 MiB
 * passed, and the guest panicked: "System is deadlocked on memory").
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { buildGuestAssets } from '../../../src/guest/build.js';
import { Sandbox, SandboxError } from '../../../src/sandbox/sandbox.js';
import { MIN_MEMORY_MIB } from '../../../src/sandbox/config.js';
import { InvalidArgumentError } from '../../../src/errors.js';
import { expectNothingLeft, forceCleanup, makeStateDir, runScript, skipReason } from './fixture.js';

describe.skipIf(skipReason)(`the memory minimum${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;

  beforeAll(async () => {
    await buildGuestAssets();
  });

  beforeEach(async () => {
    stateDir = await makeStateDir();
  });

  afterEach(async () => {
    try {
      for (const info of await Sandbox.list({ stateDir })) await (await Sandbox.attach(info.id, { stateDir })).delete({ force: true });
      await expectNothingLeft(stateDir);
    } finally {
      await forceCleanup(stateDir);
    }
  });

  // The guest is told it has 48 MiB (kernel mem=48M: the config's own minimum does not let a
  // sandbox have so little): its kernel panics while it boots. start() rejects with a
  // SandboxError that names the panic, whose backtrace alone fills the console tail.
  it('a guest that runs out of memory while it boots fails start() with a SandboxError naming the panic', async () => {
    const sandbox = await Sandbox.create({ stateDir, guest: { kernelArgs: ['mem=48M'] } });
    const error = await sandbox.start().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SandboxError);
    // Which allocation fails first depends on the initramfs's size (the coverage build's agent is
    // larger): seen "System is deadlocked on memory" and "Cannot create bdev pseudo-fs". The error
    // names the panic the console shows.
    const message = (error as Error).message;
    const named = /^sandbox "[^"]+": the (?:VM exited during start \(guest-reset\)|guest's agent hung up during start \(.*\)): the guest kernel panicked: ([^;\n]+); console:\n/u.exec(message);
    expect(named, message).not.toBeNull();
    expect(message).toContain(`Kernel panic - not syncing: ${named![1]}`);
    expect((await sandbox.record()).state).toBe('stopped');
    await sandbox.delete();
  }, 300_000);

  it.each(['q35', 'microvm'] as const)('%s: the minimum boots and runs a container; one MiB less is refused before anything is made', async (machine) => {
    const sandbox = await Sandbox.create({ stateDir, machine, memoryMiB: MIN_MEMORY_MIB[machine] });
    try {
      await sandbox.start();
      const { out, err, code } = await runScript(sandbox, {}, 'echo ok; head -1 /proc/meminfo');
      expect({ err, code }).toEqual({ err: '', code: 0 });
      expect(out).toMatch(/^ok\nMemTotal: +\d+ kB\n$/u);
    } finally {
      await sandbox.delete({ force: true });
    }
    const error = await Sandbox.create({ stateDir, machine, memoryMiB: MIN_MEMORY_MIB[machine] - 1 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error).toMatchObject({ field: 'memoryMiB', message: expect.stringContaining(`needs to boot its guest`) });
    expect(await fs.readdir(path.join(stateDir, 'sandboxes')).catch(() => [])).toEqual([]);
  }, 300_000);
});
