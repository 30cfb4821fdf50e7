import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CniConfig, CniConfigError } from '../../src/network/cni/index.js';
import { InvalidArgumentError, NotFoundError } from '../../src/errors.js';

function rejects(fn: () => unknown, message: RegExp | string): CniConfigError {
  let error: unknown;
  try {
    fn();
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(CniConfigError);
  expect(error).toBeInstanceOf(InvalidArgumentError);
  expect((error as CniConfigError).code).toBe('ERR_VMPOD_INVALID_ARGUMENT');
  if (typeof message === 'string') expect((error as Error).message).toBe(message);
  else expect((error as Error).message).toMatch(message);
  return error as CniConfigError;
}

async function rejectsAsync(promise: Promise<unknown>, message: RegExp | string): Promise<CniConfigError> {
  let error: unknown;
  try {
    await promise;
  } catch (e) {
    error = e;
  }
  return rejects(() => {
    if (error !== undefined) throw error;
  }, message);
}

const bridge = { type: 'bridge', bridge: 'cni0', ipam: { type: 'host-local', subnet: '10.1.0.0/16' } };

describe('CniConfig from objects and text', () => {
  it('accepts a configuration list and keeps plugin keys as they are', () => {
    const conf = CniConfig.fromObject({
      cniVersion: '1.0.0',
      name: 'dbnet',
      disableCheck: 'true',
      plugins: [bridge, { type: 'tuning', capabilities: { mac: true, ips: false }, sysctl: { 'net.core.somaxconn': '500' } }],
      extraTopLevel: 1,
    });
    expect(conf.name).toBe('dbnet');
    expect(conf.cniVersion).toBe('1.0.0');
    expect(conf.disableCheck).toBe(true);
    expect(conf.disableGC).toBe(false);
    expect(conf.plugins).toEqual([bridge, { type: 'tuning', capabilities: { mac: true, ips: false }, sysctl: { 'net.core.somaxconn': '500' } }]);
    expect(conf.capabilities).toEqual(['mac']);
    expect(Object.isFrozen(conf.plugins[0])).toBe(true);
    // toJSON round-trips (it is what the result cache stores).
    expect(CniConfig.fromObject(JSON.parse(JSON.stringify(conf)))).toEqual(conf);
    expect(JSON.parse(JSON.stringify(conf))).toMatchObject({ extraTopLevel: 1 });
  });

  it('turns a single-plugin .conf into a list of one', () => {
    const conf = CniConfig.fromObject({ cniVersion: '0.4.0', name: 'one', type: 'bridge', bridge: 'br1' });
    expect(conf.cniVersion).toBe('0.4.0');
    expect(conf.plugins).toEqual([{ cniVersion: '0.4.0', name: 'one', type: 'bridge', bridge: 'br1' }]);
  });

  it('picks the highest supported version of cniVersion and cniVersions', () => {
    const conf = CniConfig.fromObject({ cniVersion: '0.4.0', cniVersions: ['0.3.1', '1.0.0', '0.2.0', '9.0.0'], name: 'v', plugins: [bridge] });
    expect(conf.cniVersion).toBe('1.0.0');
    expect(conf.cniVersions).toEqual(['1.0.0', '0.4.0', '0.3.1']);
    expect(conf.withVersion('0.4.0').cniVersion).toBe('0.4.0');
    expect(conf.withVersion('0.4.0').cniVersions).toEqual(['0.4.0']);
    rejects(() => conf.withVersion('0.2.0'), /"0.2.0" is not one of this network's versions/);
  });

  it('rejects wrong or missing versions', () => {
    rejects(() => CniConfig.fromObject({ cniVersion: '9.9.9', name: 'n', plugins: [bridge] }), 'cniVersion: "9.9.9" is not supported (vmpod runs CNI 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)');
    rejects(() => CniConfig.fromObject({ cniVersion: '0.2.0', name: 'n', plugins: [bridge] }), /"0.2.0" is not supported/);
    rejects(() => CniConfig.fromObject({ cniVersion: 'one', name: 'n', plugins: [bridge] }), 'cniVersion: "one" is not a version (expected MAJOR.MINOR.PATCH)');
    rejects(() => CniConfig.fromObject({ cniVersion: 1, name: 'n', plugins: [bridge] }), /cniVersion: 1 is not a version/);
    rejects(() => CniConfig.fromObject({ name: 'n', plugins: [bridge] }), 'cniVersion: is missing');
    rejects(() => CniConfig.fromObject({ cniVersions: ['0.1.0', '2.0.0'], name: 'n', plugins: [bridge] }), /cniVersions: "0.1.0", "2.0.0" are not supported/);
    rejects(() => CniConfig.fromObject({ cniVersions: '1.0.0', name: 'n', plugins: [bridge] }), /cniVersions: must be a list/);
  });

  it('rejects bad names, plugin lists and plugin types', () => {
    const ok = { cniVersion: '1.0.0', name: 'n', plugins: [bridge] };
    rejects(() => CniConfig.fromObject({ ...ok, name: undefined }), 'name: is missing');
    rejects(() => CniConfig.fromObject({ ...ok, name: '-x' }), /name: "-x" is not a valid network name/);
    rejects(() => CniConfig.fromObject({ ...ok, name: 'a/b' }), /not a valid network name/);
    rejects(() => CniConfig.fromObject({ ...ok, plugins: [] }), 'plugins: is empty: a network needs at least one plugin');
    rejects(() => CniConfig.fromObject({ cniVersion: '1.0.0', name: 'n' }), /plugins: is empty/);
    rejects(() => CniConfig.fromObject({ ...ok, plugins: {} }), 'plugins: must be a list of plugin configurations');
    rejects(() => CniConfig.fromObject({ ...ok, plugins: [bridge, 'x'] }), 'plugins[1]: a plugin configuration must be a JSON object');
    rejects(() => CniConfig.fromObject({ ...ok, plugins: [{ bridge: 'x' }] }), 'plugins[0].type: is missing: every plugin needs a "type"');
    rejects(() => CniConfig.fromObject({ ...ok, plugins: [{ type: '../../bin/sh' }] }), /plugins\[0\]\.type: "..\/..\/bin\/sh" is not a valid plugin type/);
    rejects(() => CniConfig.fromObject({ ...ok, plugins: [{ type: 'a b' }] }), /not a valid plugin type/);
    rejects(() => CniConfig.fromObject({ ...ok, plugins: [{ type: '' }] }), /not a valid plugin type/);
    rejects(() => CniConfig.fromObject({ ...ok, plugins: [{ type: 'bridge', ipam: { type: '/usr/bin/x' } }] }), /plugins\[0\]\.ipam\.type: .* is not a valid plugin type/);
    rejects(() => CniConfig.fromObject({ ...ok, plugins: [{ type: 'bridge', capabilities: { mac: 'yes' } }] }), /capabilities: must be an object of booleans/);
    rejects(() => CniConfig.fromObject({ ...ok, plugins: [{ type: 'bridge', prevResult: {} }] }), 'plugins[0].prevResult: is reserved: the runtime sets it at execution time');
    rejects(() => CniConfig.fromObject({ ...ok, plugins: [{ type: 'bridge', runtimeConfig: {} }] }), /runtimeConfig: is reserved/);
    rejects(() => CniConfig.fromObject({ ...ok, plugins: [{ type: 'bridge', 'cni.dev/x': 1 }] }), /cni\.dev\/x: is reserved/);
    rejects(() => CniConfig.fromObject({ ...ok, disableCheck: 'maybe' }), 'disableCheck: must be true or false, not "maybe"');
    rejects(() => CniConfig.fromObject([ok]), 'config: a network configuration must be a JSON object');
  });

  it('names the position of malformed JSON', () => {
    const text = '{\n  "cniVersion": "1.0.0",\n  "name": "x"\n  "plugins": []\n}';
    const error = rejects(() => CniConfig.parse(text, '/etc/cni/net.d/10-x.conflist'), /^\/etc\/cni\/net\.d\/10-x\.conflist:4:3: malformed JSON at line 4, column 3: /);
    expect([error.file, error.line, error.column]).toEqual(['/etc/cni/net.d/10-x.conflist', 4, 3]);
    const truncated = rejects(() => CniConfig.parse('{"name": "x",'), /malformed JSON at line 1, column 14/);
    expect(truncated.file).toBeUndefined();
  });
});

describe('CniConfig from files', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-cni-conf-'));
  });
  afterEach(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });
  const write = (name: string, value: unknown): Promise<void> =>
    fs.writeFile(path.join(dir, name), typeof value === 'string' ? value : JSON.stringify(value));

  it('loads .conflist, .conf and .json files sorted by name, skipping the rest', async () => {
    await write('20-b.conflist', { cniVersion: '1.0.0', name: 'b', plugins: [bridge] });
    await write('10-a.conf', { cniVersion: '0.4.0', name: 'a', type: 'ptp' });
    await write('30-c.json', { cniVersion: '0.3.1', name: 'c', type: 'macvlan' });
    await write('05-notes.txt', 'not a config');
    await fs.mkdir(path.join(dir, '00-dir.conflist'));
    await fs.symlink(path.join(dir, '20-b.conflist'), path.join(dir, '40-link.conflist.bak'));
    // A symlink to a regular file counts, under the link's name.
    await fs.mkdir(path.join(dir, 'store'));
    await write('store/d.txt', { cniVersion: '1.0.0', name: 'd', plugins: [{ type: 'ptp' }] });
    await fs.symlink(path.join(dir, 'store', 'd.txt'), path.join(dir, '40-d.conflist'));
    const configs = await CniConfig.loadDir(dir);
    expect(configs.map((c) => [c.name, c.cniVersion, c.plugins[0]!.type, path.basename(c.source!)])).toEqual([
      ['a', '0.4.0', 'ptp', '10-a.conf'],
      ['b', '1.0.0', 'bridge', '20-b.conflist'],
      ['c', '0.3.1', 'macvlan', '30-c.json'],
      ['d', '1.0.0', 'ptp', '40-d.conflist'],
    ]);
    expect((await CniConfig.load(dir, 'b')).plugins).toEqual([bridge]);
    await expect(CniConfig.load(dir, 'zzz')).rejects.toBeInstanceOf(NotFoundError);
  });

  it('rejects two files defining the same network, naming both', async () => {
    await write('10-a.conflist', { cniVersion: '1.0.0', name: 'same', plugins: [bridge] });
    await write('20-a.conf', { cniVersion: '1.0.0', name: 'same', type: 'ptp' });
    await rejectsAsync(CniConfig.loadDir(dir), `${dir}/20-a.conf name: network "same" is already defined by ${dir}/10-a.conflist`);
  });

  it('names the file and position of malformed JSON in a directory', async () => {
    await write('10-ok.conflist', { cniVersion: '1.0.0', name: 'ok', plugins: [bridge] });
    await write('20-bad.conflist', '{"cniVersion": "1.0.0", "name": "bad", "plugins": [{"type": "bridge",}]}');
    const error = await rejectsAsync(CniConfig.loadDir(dir), /20-bad\.conflist:1:70: malformed JSON at line 1, column 70/);
    expect(error.file).toBe(path.join(dir, '20-bad.conflist'));
  });

  it('keeps .conf and .conflist apart', async () => {
    await write('10-list.conf', { cniVersion: '1.0.0', name: 'l', plugins: [bridge] });
    await rejectsAsync(CniConfig.loadFile(path.join(dir, '10-list.conf')), /plugins: a \.conf file holds one plugin; name a configuration list "\.conflist"/);
    await write('20-one.conflist', { cniVersion: '1.0.0', name: 'o', type: 'bridge' });
    await rejectsAsync(CniConfig.loadFile(path.join(dir, '20-one.conflist')), /plugins: is empty/);
  });

  it('appends plugins from the sibling NAME/ folder unless loadOnlyInlinedPlugins (CNI 1.1)', async () => {
    await write('10-agg.conflist', { cniVersion: '1.1.0', name: 'agg', plugins: [bridge] });
    await fs.mkdir(path.join(dir, 'agg'));
    await write('agg/20-tuning.conf', { type: 'tuning' });
    await write('agg/10-portmap.conf', { type: 'portmap', capabilities: { portMappings: true } });
    expect((await CniConfig.loadFile(path.join(dir, '10-agg.conflist'))).plugins.map((p) => p.type)).toEqual(['bridge', 'portmap', 'tuning']);
    await write('10-agg.conflist', { cniVersion: '1.1.0', name: 'agg', loadOnlyInlinedPlugins: true, plugins: [bridge] });
    expect((await CniConfig.loadFile(path.join(dir, '10-agg.conflist'))).plugins.map((p) => p.type)).toEqual(['bridge']);
    await write('agg/30-bad.conf', { type: '../evil' });
    await write('10-agg.conflist', { cniVersion: '1.1.0', name: 'agg', plugins: [bridge] });
    await rejectsAsync(CniConfig.loadFile(path.join(dir, '10-agg.conflist')), /agg\/30-bad\.conf plugin\.type: "..\/evil" is not a valid plugin type/);
  });

  it('rejects a missing directory and oversized files', async () => {
    await expect(CniConfig.loadDir(path.join(dir, 'nope'))).rejects.toBeInstanceOf(NotFoundError);
    await write('10-big.conflist', `{"name": "big", "cniVersion": "1.0.0", "pad": "${'x'.repeat(1 << 20)}"}`);
    await rejectsAsync(CniConfig.loadDir(dir), /10-big\.conflist: is \d+ bytes; configurations are limited to 1048576/);
  });
});
