/**
 * Failures of a sandbox's network, without a VM: a plugin that refuses ADD (after bridge ran)
 * gives a typed error with its code and message and leaves nothing behind; bad configurations
 * (unknown plugin, malformed JSON, a CNI version the plugins do not speak or vmpod does not
 * know, two networks for one interface name, a missing file) are rejected by Sandbox.create
 * before anything is recorded.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CniConfigError, CniPluginError, CniPluginNotFoundError, CniVersionError } from '../../../src/network/cni/index.js';
import { InvalidArgumentError, NotFoundError } from '../../../src/errors.js';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { World, ipj, sh, skipReason, type BridgeNet } from './fixture.js';

/** A CNI plugin that answers VERSION, refuses ADD with code 7, and accepts DEL. */
const FAILING_PLUGIN = `#!/bin/sh
cat >/dev/null
case "$CNI_COMMAND" in
  VERSION) echo '{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}' ;;
  ADD) echo '{"cniVersion":"1.0.0","code":7,"msg":"refused by the test plugin","details":"no reason"}'; exit 1 ;;
esac
exit 0
`;

describe.skipIf(skipReason)(`sandbox network failures${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  const world = new World();
  let net: BridgeNet;
  let pluginDir: string;

  beforeAll(async () => {
    await world.init();
    net = world.bridgeNet();
    pluginDir = path.join(world.dir, 'plugins');
    await fs.mkdir(pluginDir);
    await fs.writeFile(path.join(pluginDir, 'vmpodfail'), FAILING_PLUGIN, { mode: 0o755 });
  });

  afterAll(async () => {
    await world.cleanup();
  });

  it('turns a failing plugin into a typed error with its code and message, and leaves nothing behind', async () => {
    const config = { ...net.config, plugins: [...net.config.plugins, { type: 'vmpodfail' }] };
    const sandbox = await Sandbox.create({ stateDir: world.stateDir, network: { cni: [{ config }], cniPluginDirs: [pluginDir] } });
    const failure = await sandbox.start().then(
      () => undefined,
      (error: unknown) => error,
    );
    expect(failure).toBeInstanceOf(CniPluginError);
    expect(failure).toMatchObject({ cniCode: 7, msg: 'refused by the test plugin', details: 'no reason', plugin: 'vmpodfail', command: 'ADD', network: net.name });
    // The bridge plugin ran before it: its veth, the IP and the namespace are gone again.
    const namespaces = (JSON.parse((await sh('ip', ['-j', 'netns', 'list'])) || '[]') as any[]).map((n) => n.name);
    expect(namespaces).not.toContain(`vmpod-${sandbox.id}`);
    expect(await ipj<any[]>(['link', 'show', 'master', net.bridge]).catch(() => [])).toEqual([]);
    const ipam = path.join(world.ipamDir, net.name);
    expect((await fs.readdir(ipam).catch(() => [] as string[])).filter((f) => /^\d/u.test(f))).toEqual([]);
    expect(await fs.readdir(path.join(sandbox.dir, 'cni', 'results')).catch(() => [])).toEqual([]);
    expect(await sandbox.networks()).toEqual([]);
    expect(sandbox.state).toBe('stopped'); // a start that failed: nothing of it is left
    await sandbox.delete();
    await world.expectNothingLeft([sandbox.id]);
  });

  it('rejects bad network configurations at create, before anything is recorded', async () => {
    const create = (network: object) => Sandbox.create({ stateDir: world.stateDir, network: network as any }).then(
      (s) => {
        throw new Error(`created ${s.id}`);
      },
      (error: unknown) => error as Error,
    );
    const plugin = (type: string) => ({ cniVersion: '1.0.0', name: 'badnet', plugins: [{ type }] });

    const unknown = await create({ cni: [{ config: plugin('nosuchplugin') }] });
    expect(unknown).toBeInstanceOf(CniPluginNotFoundError);
    expect(unknown.message).toContain('nosuchplugin');

    const malformed = path.join(world.dir, '10-bad.conflist');
    await fs.writeFile(malformed, '{\n  "cniVersion": "1.0.0",\n  "name": "bad",\n  "plugins": [ { "type": "bridge" }, ]\n}\n');
    const json = await create({ cni: [{ file: malformed }] });
    expect(json).toBeInstanceOf(CniConfigError);
    expect(json.message).toMatch(/10-bad\.conflist:\d+:\d+: malformed JSON at line \d+/u);

    const old = await create({ cni: [{ config: { ...plugin('bridge'), cniVersion: '0.2.0' } }] });
    expect(old).toBeInstanceOf(CniConfigError);
    expect(old.message).toContain('"0.2.0" is not supported');
    // 1.1.0 is vmpod's, not Debian's plugins' (they speak up to 1.0.0): VERSION tells.
    const newer = await create({ cni: [{ config: { ...net.config, cniVersion: '1.1.0' } }] });
    expect(newer).toBeInstanceOf(CniVersionError);
    expect(newer.message).toMatch(/1\.1\.0.*bridge/u);

    const twice = await create({ cni: [{ config: net.config }, { config: { ...net.config, name: 'other' }, ifName: 'eth0' }] });
    expect(twice).toBeInstanceOf(InvalidArgumentError);
    expect(twice.message).toContain('interface name "eth0" is used by both network');

    const missing = await create({ cni: [{ file: path.join(world.dir, 'nope.conflist') }] });
    expect(missing).toBeInstanceOf(NotFoundError);

    const model = await create({ model: 'vlan' });
    expect(model).toBeInstanceOf(InvalidArgumentError);
    expect((model as InvalidArgumentError).field).toBe('network.model');

    expect(await fs.readdir(path.join(world.stateDir, 'sandboxes')).catch(() => [])).toEqual([]);
  });
});
