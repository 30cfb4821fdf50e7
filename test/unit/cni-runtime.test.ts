import fs from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  CniAttachmentExistsError,
  CniConfig,
  CniExecError,
  CniGcError,
  CniOutputError,
  CniPluginError,
  CniPluginNotFoundError,
  CniRuntime,
  CniVersionError,
  assertUniqueInterfaceNames,
} from '../../src/network/cni/index.js';
import { AbortError, InvalidArgumentError, NotFoundError, TimeoutError } from '../../src/errors.js';
import { FakePlugins, behaviours } from './cni-fake-plugins.js';

// Fake plugins never enter the namespace, but the runtime checks that CNI_NETNS is one:
// this process's own netns is a real one that any user can name.
const NETNS = '/proc/self/ns/net';

let fake: FakePlugins;
let cni: CniRuntime;

/** True while `pid` runs; a zombie (killed, not yet reaped by its new parent) counts as gone. */
async function alive(pid: number): Promise<boolean> {
  // A killed grandchild is reparented and reaped asynchronously: give that a moment.
  for (let i = 0; i < 40; i++) {
    const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
    if (stat === undefined || stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

async function caught(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected a rejection');
}

function net(plugins: unknown[], extra: Record<string, unknown> = {}): CniConfig {
  return CniConfig.fromObject({ cniVersion: '1.0.0', name: 'net1', plugins, ...extra });
}

beforeEach(async () => {
  fake = await FakePlugins.create();
  // A plugin dir that does not exist comes first: it is skipped.
  cni = new CniRuntime({ pluginDirs: [path.join(fake.dir, 'missing'), fake.dir], cacheDir: path.join(fake.dir, 'cache') });
  for (const [name, body] of Object.entries(behaviours)) await fake.write(name, body);
});

afterEach(async () => {
  await fake.remove();
});

describe('CniRuntime ADD/CHECK/DEL with fake plugins', () => {
  it('runs the chain with the env and stdin of the spec, chains prevResult, and caches the result', async () => {
    const network = net([
      { type: 'iface', bridge: 'br0', ipam: { type: 'iface', subnet: '10.9.0.0/24' }, capabilities: { portMappings: true } },
      { type: 'chain', capabilities: { mac: true, bandwidth: false }, custom: { keep: [1, 2] } },
    ]);
    const result = await cni.add(network, {
      containerId: 'box-1',
      netns: NETNS,
      ifName: 'eth7',
      args: { IgnoreUnknown: '1', K8S_POD_NAME: 'web' },
      capabilityArgs: { mac: '02:11:22:33:44:55', bandwidth: { ingressRate: 1 }, portMappings: [{ hostPort: 8080 }] },
    });

    const calls = await fake.calls();
    expect(calls.map((c) => `${c.plugin}:${c.command}`)).toEqual(['iface:ADD', 'chain:ADD']);
    const [first, second] = calls;
    // The environment is exactly CNI_* plus PATH: nothing else of this process leaks.
    expect(Object.keys(first!.env).sort()).toEqual(['CNI_ARGS', 'CNI_COMMAND', 'CNI_CONTAINERID', 'CNI_IFNAME', 'CNI_NETNS', 'CNI_PATH', 'PATH']);
    expect(first!.env).toMatchObject({
      CNI_COMMAND: 'ADD',
      CNI_CONTAINERID: 'box-1',
      CNI_NETNS: NETNS,
      CNI_IFNAME: 'eth7',
      CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAME=web',
      CNI_PATH: `${path.join(fake.dir, 'missing')}:${fake.dir}:/opt/cni/bin:/usr/lib/cni`,
    });
    // name and cniVersion injected, capabilities removed, runtimeConfig = enabled capabilities only,
    // no prevResult for the first plugin.
    expect(first!.stdin).toEqual({
      cniVersion: '1.0.0',
      name: 'net1',
      type: 'iface',
      bridge: 'br0',
      ipam: { type: 'iface', subnet: '10.9.0.0/24' },
      runtimeConfig: { portMappings: [{ hostPort: 8080 }] },
    });
    expect(second!.stdin).toMatchObject({ type: 'chain', custom: { keep: [1, 2] }, runtimeConfig: { mac: '02:11:22:33:44:55' } });
    expect(second!.stdin).not.toHaveProperty('capabilities');
    expect((second!.stdin['prevResult'] as { interfaces: { mac?: string }[] }).interfaces[2]!.mac).toBe('02:00:00:00:00:01');

    // The typed result is the last plugin's.
    expect(result.cniVersion).toBe('1.0.0');
    expect(result.interfaces[2]).toEqual({ name: 'eth7', mac: '02:11:22:33:44:55', sandbox: NETNS });
    expect(result.ips).toEqual([{ address: '10.9.0.2/24', gateway: '10.9.0.1', interface: 2 }]);
    expect(result.dns).toEqual({ nameservers: ['10.9.0.1'] });

    // The cache file is libcni's cniCacheV1 record, private to root.
    const file = path.join(fake.dir, 'cache', 'results', 'net1-box-1-eth7');
    const record = JSON.parse(await fs.readFile(file, 'utf8')) as Record<string, unknown>;
    expect((await fs.stat(file)).mode & 0o777).toBe(0o600);
    expect(record).toMatchObject({ kind: 'cniCacheV1', containerId: 'box-1', ifName: 'eth7', networkName: 'net1', netns: NETNS });
    expect(record['cniArgs']).toEqual([['IgnoreUnknown', '1'], ['K8S_POD_NAME', 'web']]);
    expect(JSON.parse(Buffer.from(record['config'] as string, 'base64').toString())).toMatchObject({ name: 'net1', cniVersion: '1.0.0' });
    expect(await cni.cachedResult('net1', { containerId: 'box-1', ifName: 'eth7' })).toEqual(result);
    expect((await fs.readdir(path.join(fake.dir, 'cache', 'results'))).filter((f) => f.startsWith('.'))).toEqual([]);
  });

  it('CHECK gives every plugin the cached result; DEL runs in reverse with it, then drops the cache; DEL is idempotent', async () => {
    const network = net([{ type: 'iface' }, { type: 'chain', capabilities: { mac: true } }]);
    const att = { containerId: 'c1', netns: NETNS, ifName: 'eth0', capabilityArgs: { mac: '02:aa:aa:aa:aa:aa' } };
    const added = await cni.add(network, att);
    await fake.clearLog();

    await cni.check(network, att);
    await cni.del(network, att);
    const calls = await fake.calls();
    expect(calls.map((c) => `${c.plugin}:${c.command}`)).toEqual(['iface:CHECK', 'chain:CHECK', 'chain:DEL', 'iface:DEL']);
    for (const call of calls) {
      expect((call.stdin['prevResult'] as { interfaces: { mac?: string }[] }).interfaces[2]!.mac).toBe(added.interfaces[2]!.mac);
      expect(call.stdin['cniVersion']).toBe('1.0.0');
    }
    expect(calls[2]!.stdin['runtimeConfig']).toEqual({ mac: '02:aa:aa:aa:aa:aa' });
    expect(await cni.cachedResult(network, att)).toBeUndefined();

    // Second DEL: still runs the plugins (they clean up permissively), now without prevResult.
    await fake.clearLog();
    await cni.del(network, att);
    const again = await fake.calls();
    expect(again.map((c) => `${c.plugin}:${c.command}`)).toEqual(['chain:DEL', 'iface:DEL']);
    expect(again[0]!.stdin).not.toHaveProperty('prevResult');

    // CHECK after DEL is refused: there is no ADD to check.
    expect(await caught(cni.check(network, att))).toBeInstanceOf(NotFoundError);
  });

  it('DELs from a new runtime instance using only the on-disk cache (config, netns, args)', async () => {
    const network = net([{ type: 'iface' }, { type: 'chain', capabilities: { mac: true } }]);
    await cni.add(network, { containerId: 'c2', netns: NETNS, ifName: 'eth1', args: { A: 'b' }, capabilityArgs: { mac: '02:bb:bb:bb:bb:bb' } });
    await fake.clearLog();

    const other = new CniRuntime({ pluginDirs: [fake.dir], cacheDir: path.join(fake.dir, 'cache') });
    expect((await other.cachedAttachments('c2')).map((a) => [a.network, a.ifName, a.netns])).toEqual([['net1', 'eth1', NETNS]]);
    // CHECK, too, takes what it is not given from the cache: the same parameters as ADD.
    await other.check(network, { containerId: 'c2', ifName: 'eth1' });
    const checks = await fake.calls();
    expect(checks.map((c) => `${c.plugin}:${c.command}`)).toEqual(['iface:CHECK', 'chain:CHECK']);
    expect(checks[1]!.env).toMatchObject({ CNI_NETNS: NETNS, CNI_ARGS: 'A=b' });
    expect(checks[1]!.stdin['runtimeConfig']).toEqual({ mac: '02:bb:bb:bb:bb:bb' });
    await fake.clearLog();
    await other.del('net1', { containerId: 'c2', ifName: 'eth1' });
    const calls = await fake.calls();
    expect(calls.map((c) => `${c.plugin}:${c.command}`)).toEqual(['chain:DEL', 'iface:DEL']);
    expect(calls[0]!.env).toMatchObject({ CNI_NETNS: NETNS, CNI_ARGS: 'A=b', CNI_CONTAINERID: 'c2', CNI_IFNAME: 'eth1' });
    expect(calls[0]!.stdin['runtimeConfig']).toEqual({ mac: '02:bb:bb:bb:bb:bb' });
    expect(calls[0]!.stdin['prevResult']).toBeDefined();
    expect(await other.cachedAttachments()).toEqual([]);

    // By name with nothing cached, nothing is known to delete: no plugin runs.
    await fake.clearLog();
    await other.del('net1', { containerId: 'c2', ifName: 'eth1' });
    expect(await fake.calls()).toEqual([]);
  });

  it('converts 0.4.0 results to the 1.x model and passes them on untouched', async () => {
    const network = CniConfig.fromObject({ cniVersion: '0.4.0', name: 'old', plugins: [{ type: 'legacy' }, { type: 'chain' }] });
    const result = await cni.add(network, { containerId: 'c3', netns: NETNS, ifName: 'eth0' });
    expect(result.sourceVersion).toBe('0.4.0');
    expect(result.cniVersion).toBe('1.0.0');
    expect(result.ips).toEqual([
      { address: '10.4.0.2/24', gateway: '10.4.0.1', interface: 0 },
      { address: 'fd00:4::2/64', interface: 0 },
    ]);
    expect(result.routes).toEqual([{ dst: '0.0.0.0/0', gw: '10.4.0.1' }]);
    // The next plugin got the 0.4.0 result as it was printed (with ips[].version).
    const calls = await fake.calls();
    expect((calls[1]!.stdin['prevResult'] as { ips: { version: string }[] }).ips[0]!.version).toBe('4');
    await cni.check(network, { containerId: 'c3', netns: NETNS, ifName: 'eth0' });
    await cni.del(network, { containerId: 'c3', ifName: 'eth0' });
  });

  it('refuses CHECK below 0.4.0 and skips it with disableCheck', async () => {
    const v031 = CniConfig.fromObject({ cniVersion: '0.3.1', name: 'n031', plugins: [{ type: 'legacy' }] });
    await cni.add(v031, { containerId: 'c4', netns: NETNS, ifName: 'eth0' });
    expect(await caught(cni.check(v031, { containerId: 'c4', netns: NETNS, ifName: 'eth0' }))).toBeInstanceOf(CniVersionError);
    // 0.3.x DEL gets no prevResult (libcni passes the cached one from 0.4.0 on).
    await fake.clearLog();
    await cni.del(v031, { containerId: 'c4', ifName: 'eth0' });
    expect((await fake.calls())[0]!.stdin).not.toHaveProperty('prevResult');

    const noCheck = net([{ type: 'iface' }], { disableCheck: true, name: 'nocheck' });
    await cni.add(noCheck, { containerId: 'c5', netns: NETNS, ifName: 'eth0' });
    await fake.clearLog();
    await cni.check(noCheck, { containerId: 'c5', netns: NETNS, ifName: 'eth0' });
    expect(await fake.calls()).toEqual([]);
    await cni.del(noCheck, { containerId: 'c5', ifName: 'eth0' });
  });
});

describe('CniRuntime failures', () => {
  it('turns a CNI error result into CniPluginError with code, msg and details, and undoes the chain with DEL', async () => {
    const network = net([{ type: 'iface' }, { type: 'error' }, { type: 'chain' }]);
    const error = await caught(cni.add(network, { containerId: 'f1', netns: NETNS, ifName: 'eth0' }));
    expect(error).toBeInstanceOf(CniPluginError);
    const e = error as CniPluginError;
    expect(e.code).toBe('ERR_VMPOD_CNI_PLUGIN');
    expect([e.cniCode, e.msg, e.details, e.plugin, e.command, e.network]).toEqual([107, 'cannot frobnicate', 'the frobnicator is out of order', 'error', 'ADD', 'net1']);
    expect(e.message).toBe('CNI plugin "error" (ADD of network "net1") failed with code 107: cannot frobnicate: the frobnicator is out of order');
    // DEL over the whole chain in reverse, with the partial result of what did run.
    const calls = await fake.calls();
    expect(calls.map((c) => `${c.plugin}:${c.command}`)).toEqual(['iface:ADD', 'error:ADD', 'chain:DEL', 'error:DEL', 'iface:DEL']);
    expect(calls[2]!.stdin['prevResult']).toMatchObject({ ips: [{ address: '10.9.0.2/24' }] });
    expect(await cni.cachedAttachments()).toEqual([]);
  });

  it('kills a hanging plugin and its children at the timeout, gives TimeoutError, and undoes the chain', async () => {
    const network = net([{ type: 'iface' }, { type: 'hang' }]);
    const error = await caught(cni.add(network, { containerId: 'f2', netns: NETNS, ifName: 'eth0' }, { timeoutMs: 1500 }));
    expect(error).toBeInstanceOf(TimeoutError);
    expect((error as TimeoutError).message).toBe('CNI plugin "hang" (ADD of network "net1") did not finish within 1500 ms');
    const calls = await fake.calls();
    const pids = (calls.find((c) => 'hangPids' in c) as unknown as { hangPids: number[] }).hangPids;
    expect(pids).toHaveLength(2);
    for (const pid of pids) expect(await alive(pid)).toBe(false);
    expect(calls.filter((c) => c.plugin !== undefined).map((c) => `${c.plugin}:${c.command}`)).toEqual(['iface:ADD', 'hang:ADD', 'hang:DEL', 'iface:DEL']);
    expect(await cni.cachedAttachments()).toEqual([]);
  });

  it('kills the plugin when the AbortSignal fires', async () => {
    const controller = new AbortController();
    const pending = caught(cni.add(net([{ type: 'hang' }]), { containerId: 'f3', netns: NETNS, ifName: 'eth0' }, { signal: controller.signal }));
    // Wait until the plugin is running, then abort.
    for (let i = 0; i < 200 && !(await fake.calls()).some((c) => 'hangPids' in c); i++) await new Promise((r) => setTimeout(r, 25));
    controller.abort();
    const error = await pending;
    expect(error).toBeInstanceOf(AbortError);
    const pids = ((await fake.calls()).find((c) => 'hangPids' in c) as unknown as { hangPids: number[] }).hangPids;
    for (const pid of pids) expect(await alive(pid)).toBe(false);
    // An already-aborted signal runs nothing.
    await fake.clearLog();
    expect(await caught(cni.version('iface', { signal: AbortSignal.abort() }))).toBeInstanceOf(AbortError);
    expect(await fake.calls()).toEqual([]);
  });

  it('reports garbage output, a crash and an output flood with typed errors', async () => {
    const garbage = await caught(cni.add(net([{ type: 'garbage' }]), { containerId: 'f4', netns: NETNS, ifName: 'eth0' }));
    expect(garbage).toBeInstanceOf(CniOutputError);
    expect((garbage as CniOutputError).message).toMatch(/"garbage" \(ADD of network "net1"\) printed an invalid result: not JSON/);
    expect((garbage as CniOutputError).output).toBe('this is not { json');

    const crash = await caught(cni.add(net([{ type: 'crash' }]), { containerId: 'f4', netns: NETNS, ifName: 'eth0' }));
    expect(crash).toBeInstanceOf(CniExecError);
    expect((crash as CniExecError).exitCode).toBe(2);
    expect((crash as CniExecError).message).toMatch(/exited with status 2 without a CNI error result: panic: runtime error/);

    const small = new CniRuntime({ pluginDirs: [fake.dir], cacheDir: path.join(fake.dir, 'cache'), maxOutputBytes: 100_000 });
    const flood = await caught(small.add(net([{ type: 'flood' }]), { containerId: 'f4', netns: NETNS, ifName: 'eth0' }));
    expect(flood).toBeInstanceOf(CniOutputError);
    expect((flood as CniOutputError).message).toMatch(/more than 100000 bytes of output/);
    expect((flood as CniOutputError).output.length).toBeLessThan(1000);
    const flooder = (await fake.calls()).find((c) => c.plugin === 'flood' && c.command === 'ADD');
    expect(await alive(flooder!.pid)).toBe(false);
    expect(await cni.cachedAttachments()).toEqual([]);
  });

  it('rejects an unknown plugin (also an unknown IPAM plugin) before running anything', async () => {
    const missing = await caught(cni.add(net([{ type: 'iface' }, { type: 'nosuch' }]), { containerId: 'f5', netns: NETNS, ifName: 'eth0' }));
    expect(missing).toBeInstanceOf(CniPluginNotFoundError);
    expect((missing as Error).message).toBe(
      `CNI plugin "nosuch" was not found in ${path.join(fake.dir, 'missing')}, ${fake.dir}, /opt/cni/bin, /usr/lib/cni (set pluginDirs, or install it)`,
    );
    const ipam = await caught(cni.add(net([{ type: 'iface', ipam: { type: 'nosuch-ipam' } }]), { containerId: 'f5', netns: NETNS, ifName: 'eth0' }));
    expect(ipam).toBeInstanceOf(CniPluginNotFoundError);
    // A non-executable file does not count.
    await fs.writeFile(path.join(fake.dir, 'noexec'), '#!/bin/sh\n', { mode: 0o644 });
    expect(await caught(cni.findPlugin('noexec'))).toBeInstanceOf(CniPluginNotFoundError);
    expect(await fake.calls()).toEqual([]);
  });

  it('validates attachment parameters before running anything', async () => {
    const network = net([{ type: 'iface' }]);
    const bad: [Record<string, unknown>, RegExp][] = [
      [{ containerId: '../x', netns: NETNS, ifName: 'eth0' }, /containerId: .* is not a valid id/],
      [{ containerId: 'ok', netns: NETNS, ifName: 'a-very-long-ifname' }, /ifName: .*18 bytes long/],
      [{ containerId: 'ok', netns: NETNS, ifName: 'et/h0' }, /ifName: .*contains '\/'/],
      [{ containerId: 'ok', netns: 'run/netns/x', ifName: 'eth0' }, /netns: .*not an absolute path/],
      [{ containerId: 'ok', ifName: 'eth0' }, /netns: is required/],
      [{ containerId: 'ok', netns: NETNS, ifName: 'eth0', args: { 'A;B': 'x' } }, /args\[0\]: key/],
      [{ containerId: 'ok', netns: NETNS, ifName: 'eth0', args: { A: 'x;B=y' } }, /args\.A: value/],
      [{ containerId: 'ok', netns: NETNS, ifName: 'eth0', args: [['A', 'b', 'c']] }, /args\[0\]: must be a \[KEY, VALUE\] pair/],
      [{ containerId: 'ok', netns: NETNS, ifName: 'eth0', args: 'A=b' }, /args: must be an object or a list/],
      [{ containerId: 'ok', netns: NETNS, ifName: 'eth0', capabilityArgs: [1] }, /capabilityArgs: must be an object/],
    ];
    for (const [att, message] of bad) {
      const error = await caught(cni.add(network, att as never));
      expect(error).toBeInstanceOf(InvalidArgumentError);
      expect((error as Error).message).toMatch(message);
    }
    expect(await caught(cni.add(network, { containerId: 'ok', netns: '/nonexistent/ns', ifName: 'eth0' }))).toBeInstanceOf(NotFoundError);
    const notNs = await caught(cni.add(network, { containerId: 'ok', netns: fake.dir, ifName: 'eth0' }));
    expect((notNs as Error).message).toMatch(/is not a network namespace/);
    expect(await caught(cni.add({ name: 'x' } as never, { containerId: 'ok', netns: NETNS, ifName: 'eth0' }))).toBeInstanceOf(InvalidArgumentError);
    expect(() => new CniRuntime({ pluginDirs: ['relative/dir'] })).toThrow(InvalidArgumentError);
    expect(() => new CniRuntime({ env: { CNI_COMMAND: 'x' } })).toThrow(/not starting with CNI_/);
    expect(await fake.calls()).toEqual([]);
  });

  it('rejects a second ADD of the same attachment and a duplicate interface name across networks', async () => {
    const a = net([{ type: 'iface' }], { name: 'neta' });
    const b = net([{ type: 'iface' }], { name: 'netb' });
    await cni.add(a, { containerId: 'd1', netns: NETNS, ifName: 'eth0' });
    await fake.clearLog();
    const twice = await caught(cni.add(a, { containerId: 'd1', netns: NETNS, ifName: 'eth0' }));
    expect(twice).toBeInstanceOf(CniAttachmentExistsError);
    expect((twice as Error).message).toBe('container "d1" is already attached to network "neta" as "eth0": run DEL first');
    const dup = await caught(cni.add(b, { containerId: 'd1', netns: NETNS, ifName: 'eth0' }));
    expect((dup as Error).message).toBe('interface name "eth0" of container "d1" is already used by network "neta"');
    expect(await fake.calls()).toEqual([]);
    // Another name is fine.
    await cni.add(b, { containerId: 'd1', netns: NETNS, ifName: 'eth1' });
    expect(() => assertUniqueInterfaceNames([{ network: 'neta', ifName: 'eth0' }, { network: 'netb', ifName: 'eth0' }])).toThrow(
      'attachments[1].ifName: interface name "eth0" is used by both network "neta" and network "netb": give each attachment its own ifName',
    );
    await cni.del(a, { containerId: 'd1', ifName: 'eth0' });
    await cni.del(b, { containerId: 'd1', ifName: 'eth1' });
  });

  it('serializes operations on one container', async () => {
    const network = net([{ type: 'iface' }]);
    const att = { containerId: 's1', netns: NETNS, ifName: 'eth0' };
    await Promise.all([cni.add(network, att), cni.del(network, att), cni.add(network, att), cni.del(network, att)]);
    expect(await fake.sequence()).toEqual(['iface:ADD', 'iface:DEL', 'iface:ADD', 'iface:DEL']);
  });
});

describe('CniRuntime VERSION, negotiation, plugin search, STATUS and GC', () => {
  it('reads VERSION, and maps plugins that do not know it to 0.1.0', async () => {
    expect(await cni.version('upTo100')).toEqual({ cniVersion: '1.1.0', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0'] });
    const call = (await fake.calls())[0]!;
    expect(call.stdin).toEqual({ cniVersion: '1.1.0' });
    expect(call.env['CNI_COMMAND']).toBe('VERSION');
    expect(await cni.version('ancient')).toEqual({ cniVersion: '0.1.0', supportedVersions: ['0.1.0'] });
    expect(await caught(cni.version('garbage'))).toBeInstanceOf(CniOutputError);
  });

  it('negotiates the highest version every plugin supports, and validate() checks it', async () => {
    const network = CniConfig.fromObject({ cniVersions: ['0.4.0', '1.0.0', '1.1.0'], name: 'neg', plugins: [{ type: 'upTo100' }, { type: 'modern' }] });
    expect(network.cniVersion).toBe('1.1.0');
    expect(await caught(cni.validate(network))).toBeInstanceOf(CniVersionError);
    const chosen = await cni.negotiate(network);
    expect(chosen.cniVersion).toBe('1.0.0');
    expect(await cni.validate(chosen)).toEqual([]);
    const none = CniConfig.fromObject({ cniVersion: '0.4.0', name: 'none', plugins: [{ type: 'modern' }] });
    const error = await caught(cni.negotiate(none));
    expect(error).toBeInstanceOf(CniVersionError);
    expect((error as Error).message).toMatch(/no version is supported by all of its plugins: modern supports 1\.0\.0, 1\.1\.0/);
  });

  it('searches the configured plugin dirs first, in order', async () => {
    const first = path.join(fake.dir, 'first');
    await fake.write('iface', behaviours.legacy, first);
    const ordered = new CniRuntime({ pluginDirs: [first, fake.dir], cacheDir: path.join(fake.dir, 'cache') });
    expect(await ordered.findPlugin('iface')).toBe(path.join(first, 'iface'));
    expect(await cni.findPlugin('iface')).toBe(path.join(fake.dir, 'iface'));
    expect(new CniRuntime().pluginDirs).toEqual(['/opt/cni/bin', '/usr/lib/cni']);
    expect(new CniRuntime({ pluginDirs: ['/usr/lib/cni', '/x'] }).pluginDirs).toEqual(['/usr/lib/cni', '/x', '/opt/cni/bin']);
    expect(await caught(cni.findPlugin('../iface'))).toBeInstanceOf(InvalidArgumentError);
  });

  it('runs STATUS for 1.1.0 networks and reports an unavailable plugin', async () => {
    const up = CniConfig.fromObject({ cniVersion: '1.1.0', name: 'st', plugins: [{ type: 'modern' }] });
    await cni.status(up);
    const call = (await fake.calls())[0]!;
    expect(call.command).toBe('STATUS');
    expect(Object.keys(call.env).sort()).toEqual(['CNI_COMMAND', 'CNI_PATH', 'PATH']);
    const down = CniConfig.fromObject({ cniVersion: '1.1.0', name: 'st', plugins: [{ type: 'modern', down: true }] });
    const error = await caught(cni.status(down));
    expect(error).toBeInstanceOf(CniPluginError);
    expect((error as CniPluginError).cniCode).toBe(50);
    // 1.0.0 has no STATUS: nothing runs.
    await fake.clearLog();
    await cni.status(CniConfig.fromObject({ cniVersion: '1.0.0', name: 'st', plugins: [{ type: 'modern', down: true }] }));
    expect(await fake.calls()).toEqual([]);
  });

  it('GC deletes stale cached attachments and passes the valid ones to each plugin', async () => {
    const network = CniConfig.fromObject({ cniVersion: '1.1.0', name: 'gcnet', plugins: [{ type: 'modern' }] });
    await cni.add(network, { containerId: 'keep', netns: NETNS, ifName: 'eth0' });
    await cni.add(network, { containerId: 'stale', netns: NETNS, ifName: 'eth0' });
    await fake.clearLog();
    await cni.gc(network, { validAttachments: [{ containerId: 'keep', ifName: 'eth0' }] });
    const calls = await fake.calls();
    expect(calls.map((c) => `${c.plugin}:${c.command}:${c.env['CNI_CONTAINERID'] ?? ''}`)).toEqual(['modern:DEL:stale', 'modern:GC:']);
    expect(calls[1]!.stdin['cni.dev/valid-attachments']).toEqual([{ containerID: 'keep', ifname: 'eth0' }]);
    expect((await cni.cachedAttachments()).map((a) => a.containerId)).toEqual(['keep']);

    // Errors are collected, not fatal.
    const broken = CniConfig.fromObject({ cniVersion: '1.1.0', name: 'gcnet', plugins: [{ type: 'modern' }, { type: 'nosuch' }] });
    const error = await caught(cni.gc(broken));
    expect(error).toBeInstanceOf(CniGcError);
    expect((error as CniGcError).errors.length).toBe(2); // DEL of "keep" and the GC pass both lack "nosuch"
    await cni.del(network, { containerId: 'keep', ifName: 'eth0' });
  });
});
