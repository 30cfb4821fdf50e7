/**
 * `vmpod network check` as a script relies on it: exit 0 and an `ok` line while the CNI
 * network's plugins find what they made, exit 1 and a `failed: MESSAGE` line (and the error's
 * code with --json) once something was taken away, 0 again once it is back.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { World, sh, skipReason, type BridgeNet } from './fixture.js';
import { vmpod } from '../sandbox/fixture.js';

describe.skipIf(skipReason)(`vmpod network check${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  const world = new World();
  let net: BridgeNet;
  let file: string;
  const id = `clichk-${world.tag}`;

  beforeAll(async () => {
    await world.init();
    net = world.bridgeNet();
    file = path.join(world.dir, 'check-net.conflist');
    await fs.writeFile(file, JSON.stringify(net.config));
  });

  afterAll(async () => {
    try {
      await vmpod(world.stateDir, ['delete', '-f', id]);
      await world.expectNothingLeft([id]);
    } finally {
      await world.cleanup();
    }
  });

  it('exits 0 with an ok line, 1 with the failure once the address is gone, 0 again once it is back', async () => {
    const started = await vmpod(world.stateDir, ['run', '-d', '--name', id, '--network', file, '--', 'sleep', '600']);
    expect(started.code, started.stderr).toBe(0);

    expect(await vmpod(world.stateDir, ['network', 'check', id])).toEqual({ code: 0, stdout: `eth0 (${net.name}): ok\n`, stderr: '' });
    const okJson = await vmpod(world.stateDir, ['network', 'check', id, '--json']);
    expect(okJson.code).toBe(0);
    expect(JSON.parse(okJson.stdout)).toEqual([{ network: net.name, ifName: 'eth0', status: 'ok' }]);

    // Someone removes the address the plugin gave eth0 in the sandbox's namespace.
    const ns = `vmpod-${id}`;
    const shown = JSON.parse(await sh('ip', ['-j', '-n', ns, 'addr', 'show', 'dev', 'eth0'])) as { addr_info: { family: string; local: string; prefixlen: number }[] }[];
    const v4 = shown[0]!.addr_info.find((a) => a.family === 'inet')!;
    const address = `${v4.local}/${v4.prefixlen}`;
    expect(address.startsWith(`${net.net}.`)).toBe(true);
    await sh('ip', ['-n', ns, 'addr', 'del', address, 'dev', 'eth0']);
    try {
      const failed = await vmpod(world.stateDir, ['network', 'check', id]);
      expect(failed.code).toBe(1);
      expect(failed.stderr).toBe('');
      expect(failed.stdout).toMatch(new RegExp(`^eth0 \\(${net.name}\\): failed: [^\\n]*${v4.local.replace(/\./gu, '\\.')}[^\\n]*\\n$`, 'u'));
      // By interface name, and as JSON: the same failure, with the error's code.
      const byName = await vmpod(world.stateDir, ['network', 'check', id, 'eth0', '--json']);
      expect(byName.code).toBe(1);
      const [outcome] = JSON.parse(byName.stdout) as { network: string; ifName: string; status: string; error: { code: string; message: string } }[];
      expect(outcome).toEqual({ network: net.name, ifName: 'eth0', status: 'failed', error: { code: 'ERR_VMPOD_CNI_PLUGIN', message: failed.stdout.slice(`eth0 (${net.name}): failed: `.length, -1) } });
    } finally {
      await sh('ip', ['-n', ns, 'addr', 'add', address, 'dev', 'eth0']);
    }
    expect(await vmpod(world.stateDir, ['network', 'check', id, net.name])).toEqual({ code: 0, stdout: `eth0 (${net.name}): ok\n`, stderr: '' });

    const unknown = await vmpod(world.stateDir, ['network', 'check', id, 'nothere0']);
    expect(unknown.code).toBe(125);
    expect(unknown.stdout).toBe('');
    expect((await vmpod(world.stateDir, ['delete', '-f', id])).code).toBe(0);
  });
});
