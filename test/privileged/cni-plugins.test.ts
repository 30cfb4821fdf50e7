/**
 * The CNI runtime against Debian's real plugins (containernetworking-plugins in /usr/lib/cni),
 * in fresh network namespaces, as root. Every object has a unique `vtXXXX` prefix and is
 * removed after each test.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  CniAttachmentExistsError,
  CniConfig,
  CniConfigError,
  CniOutputError,
  CniPluginError,
  CniPluginNotFoundError,
  CniRuntime,
  type CniResult,
} from '../../src/network/cni/index.js';
import { TimeoutError } from '../../src/errors.js';
import { PLUGIN_DIR, Scene, bandwidthIfb, cmd, cniSkipReason, json, writeScriptPlugin } from './cni-host.js';

const skipReason = await cniSkipReason();

let scene: Scene;
let cni: CniRuntime;
let cacheDir: string;

async function caught(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected a rejection');
}

/** The container's interface and its IPv4 address as the kernel shows them. */
async function containerAddr(ifName = 'eth0'): Promise<string | undefined> {
  const link = (await scene.addrs()).find((l) => l.ifname === ifName);
  const inet = link?.addr_info?.find((a) => a.family === 'inet');
  return inet === undefined ? undefined : `${inet.local}/${inet.prefixlen}`;
}

function hostVeth(result: CniResult): string {
  const veth = result.interfaces.find((i) => i.sandbox === undefined && i.name !== scene.bridge);
  if (veth === undefined) throw new Error('no host veth in the result');
  return veth.name;
}

describe.skipIf(skipReason !== undefined)(`CNI with Debian's plugins${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  beforeEach(async () => {
    scene = await new Scene().setup();
    cacheDir = path.join(scene.dir, 'cache');
    cni = new CniRuntime({ cacheDir, pluginDirs: [path.join(scene.dir, 'bin')] });
  });

  afterEach(async () => {
    await scene.cleanup();
    expect(await scene.leftovers()).toEqual([]);
  });

  it('bridge + host-local: ADD gives the netns an address, CHECK passes, DEL removes it and is idempotent', async () => {
    const network = CniConfig.fromObject({ cniVersion: '1.0.0', name: `${scene.prefix}-net`, plugins: [scene.bridgePlugin()] });
    const att = { containerId: `${scene.prefix}-c1`, netns: scene.netns, ifName: 'eth0' };

    const result = await cni.add(network, att);
    const address = result.ips[0]?.address;
    expect(address).toMatch(new RegExp(`^${scene.subnet.replaceAll('.', '\\.')}\\.\\d+/24$`));
    expect(await containerAddr()).toBe(address);
    const eth0 = result.interfaces[result.ips[0]!.interface!]!;
    expect(eth0).toMatchObject({ name: 'eth0', sandbox: scene.netns });
    const link = (await scene.addrs()).find((l) => l.ifname === 'eth0');
    expect(link?.address).toBe(eth0.mac);
    expect(await scene.bridgePorts()).toEqual([hostVeth(result)]);
    expect(await scene.reservedIps(network.name)).toEqual([address!.split('/')[0]]);
    expect(await cni.cachedResult(network, att)).toEqual(result);

    await cni.check(network, att);

    await cni.del(network, att);
    expect((await scene.addrs()).map((l) => l.ifname)).toEqual(['lo']);
    expect(await scene.bridgePorts()).toEqual([]);
    expect(await scene.reservedIps(network.name)).toEqual([]);
    expect(await cni.cachedAttachments()).toEqual([]);
    await cni.del(network, att); // again: nothing left, still succeeds
    await cni.del(network.name, { containerId: att.containerId, ifName: 'eth0' });
  });

  it('runs a bridge -> tuning -> bandwidth chain with prevResult and capability args, and DELs it from a new runtime using only the cache', async () => {
    const network = CniConfig.fromObject({
      cniVersion: '1.0.0',
      name: `${scene.prefix}-chain`,
      plugins: [
        scene.bridgePlugin(),
        { type: 'tuning', capabilities: { mac: true }, dataDir: path.join(scene.dir, 'tuning') },
        { type: 'bandwidth', capabilities: { bandwidth: true } },
      ],
    });
    const containerId = `${scene.prefix}-c2`;
    const ifb = bandwidthIfb(network.name, containerId);
    scene.track(ifb);
    const mac = '02:42:ac:11:00:99';
    const result = await cni.add(network, {
      containerId,
      netns: scene.netns,
      ifName: 'eth0',
      capabilityArgs: {
        mac,
        bandwidth: { ingressRate: 8_000_000, ingressBurst: 800_000, egressRate: 4_000_000, egressBurst: 400_000 },
      },
    });

    // tuning set the MAC given through runtimeConfig, and reported it in the chained result.
    const link = (await scene.addrs()).find((l) => l.ifname === 'eth0');
    expect(link?.address).toBe(mac);
    expect(result.interfaces.find((i) => i.name === 'eth0')?.mac).toBe(mac);
    // bandwidth found the host veth in prevResult: tbf on it (ingress), ifb + tbf for egress.
    const veth = hostVeth(result);
    const qdiscs = await json<{ kind: string }[]>('tc', ['-j', 'qdisc', 'show', 'dev', veth]);
    expect(qdiscs.map((q) => q.kind)).toEqual(expect.arrayContaining(['tbf', 'ingress']));
    expect(await scene.hostLinkExists(ifb)).toBe(true);
    expect((await json<{ kind: string }[]>('tc', ['-j', 'qdisc', 'show', 'dev', ifb])).map((q) => q.kind)).toContain('tbf');
    expect(result.interfaces.map((i) => i.name)).toContain(ifb);

    await cni.check(network, { containerId, netns: scene.netns, ifName: 'eth0' });

    // Another process (here: a new runtime with only the cache dir) removes it by network name.
    const other = new CniRuntime({ cacheDir });
    await other.del(network.name, { containerId, ifName: 'eth0' });
    expect(await scene.hostLinkExists(ifb)).toBe(false);
    expect(await scene.hostLinkExists(veth)).toBe(false);
    expect((await scene.addrs()).map((l) => l.ifname)).toEqual(['lo']);
    expect(await scene.reservedIps(network.name)).toEqual([]);
    expect(await other.cachedAttachments()).toEqual([]);
  });

  it('runs a 0.4.0 configuration and reads its 0.4.0 results', async () => {
    const network = CniConfig.fromObject({ cniVersion: '0.4.0', name: `${scene.prefix}-old`, plugins: [scene.bridgePlugin()] });
    const att = { containerId: `${scene.prefix}-c3`, netns: scene.netns, ifName: 'net0' };
    const result = await cni.add(network, att);
    expect(result.sourceVersion).toBe('0.4.0');
    expect(result.cniVersion).toBe('1.0.0');
    expect(await containerAddr('net0')).toBe(result.ips[0]!.address);
    // The cache keeps the plugin's own 0.4.0 output (ips[].version) for prevResult.
    const [cached] = await cni.cachedAttachments(att.containerId);
    expect((cached!.rawResult!['ips'] as { version: string }[])[0]!.version).toBe('4');
    await cni.check(network, att);
    await cni.del(network, att);
    expect((await scene.addrs()).map((l) => l.ifname)).toEqual(['lo']);
  });

  it('reads VERSION from the real plugins and negotiates down to what they support', async () => {
    const info = await cni.version('bridge');
    expect(info.supportedVersions).toEqual(expect.arrayContaining(['0.3.1', '0.4.0', '1.0.0']));
    const network = CniConfig.fromObject({ cniVersions: ['0.4.0', '1.0.0', '1.1.0'], name: `${scene.prefix}-neg`, plugins: [scene.bridgePlugin()] });
    const negotiated = await cni.negotiate(network);
    const best = ['1.1.0', '1.0.0', '0.4.0'].find((v) => info.supportedVersions.includes(v));
    expect(negotiated.cniVersion).toBe(best);
    expect(await cni.validate(negotiated)).toEqual([]);
  });

  describe('a failing plugin leaves nothing behind', () => {
    const HANG = `600.${process.pid}`;
    const cases: [string, string, (e: unknown) => void][] = [
      [
        'an error result',
        `[ "$CNI_COMMAND" = ADD ] && { printf '%s' '{"cniVersion":"1.0.0","code":117,"msg":"no frobs left","details":"pool exhausted"}'; exit 1; }\nexit 0`,
        (e) => {
          expect(e).toBeInstanceOf(CniPluginError);
          expect([(e as CniPluginError).cniCode, (e as CniPluginError).msg, (e as CniPluginError).details]).toEqual([117, 'no frobs left', 'pool exhausted']);
        },
      ],
      // A duration of this run's own, so that the check below finds this plugin's sleep and no other process's.
      ['a hang', `[ "$CNI_COMMAND" = ADD ] && exec sleep ${HANG}\nexit 0`, (e) => expect(e).toBeInstanceOf(TimeoutError)],
      ['garbage output', `[ "$CNI_COMMAND" = ADD ] && echo 'panic: garbage'\nexit 0`, (e) => expect(e).toBeInstanceOf(CniOutputError)],
    ];
    for (const [what, script, check] of cases) {
      it(`after bridge: ${what}`, async () => {
        await writeScriptPlugin(path.join(scene.dir, 'bin'), 'vmpod-test-fail', script);
        const network = CniConfig.fromObject({ cniVersion: '1.0.0', name: `${scene.prefix}-fail`, plugins: [scene.bridgePlugin(), { type: 'vmpod-test-fail' }] });
        const error = await caught(cni.add(network, { containerId: `${scene.prefix}-f`, netns: scene.netns, ifName: 'eth0' }, { timeoutMs: 2000 }));
        check(error);
        // The runtime's DEL undid bridge's work: no interface, no port, no IP, no cache entry.
        expect((await scene.addrs()).map((l) => l.ifname)).toEqual(['lo']);
        expect(await scene.bridgePorts()).toEqual([]);
        expect(await scene.reservedIps(network.name)).toEqual([]);
        expect(await cni.cachedAttachments()).toEqual([]);
        const sleeping = (await cmd('ps', ['-eo', 'args'])).split('\n').filter((l) => l === `sleep ${HANG}`);
        expect(sleeping).toEqual([]);
      });
    }
  });

  describe('bad configurations are rejected with a clear error', () => {
    it('an unknown plugin, before anything runs', async () => {
      const network = CniConfig.fromObject({ cniVersion: '1.0.0', name: `${scene.prefix}-unk`, plugins: [scene.bridgePlugin(), { type: 'no-such-plugin' }] });
      const error = await caught(cni.add(network, { containerId: `${scene.prefix}-u`, netns: scene.netns, ifName: 'eth0' }));
      expect(error).toBeInstanceOf(CniPluginNotFoundError);
      expect((error as Error).message).toContain(`CNI plugin "no-such-plugin" was not found in ${path.join(scene.dir, 'bin')}, /opt/cni/bin, ${PLUGIN_DIR}`);
      expect(await scene.hostLinkExists(scene.bridge)).toBe(false); // bridge never ran
    });

    it('malformed JSON and a wrong cniVersion, naming the file', async () => {
      const dir = path.join(scene.dir, 'net.d');
      await fs.mkdir(dir);
      await fs.writeFile(path.join(dir, '10-bad.conflist'), '{ "cniVersion": "1.0.0",\n  "name": "x", plugins: [] }');
      const malformed = await caught(CniConfig.loadDir(dir));
      expect(malformed).toBeInstanceOf(CniConfigError);
      expect((malformed as Error).message).toMatch(new RegExp(`^${dir}/10-bad\\.conflist:2:16: malformed JSON at line 2, column 16`));
      await fs.writeFile(path.join(dir, '10-bad.conflist'), JSON.stringify({ cniVersion: '0.2.0', name: 'x', plugins: [{ type: 'bridge' }] }));
      const version = await caught(CniConfig.loadDir(dir));
      expect(version).toBeInstanceOf(CniConfigError);
      expect((version as Error).message).toBe(`${dir}/10-bad.conflist cniVersion: "0.2.0" is not supported (vmpod runs CNI 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)`);
    });

    it('a duplicate interface name across two networks of one container', async () => {
      const first = CniConfig.fromObject({ cniVersion: '1.0.0', name: `${scene.prefix}-n1`, plugins: [scene.bridgePlugin()] });
      const secondBridge = `${scene.prefix}b2`;
      scene.track(secondBridge);
      const second = CniConfig.fromObject({ cniVersion: '1.0.0', name: `${scene.prefix}-n2`, plugins: [scene.bridgePlugin({ bridge: secondBridge })] });
      const att = { containerId: `${scene.prefix}-d`, netns: scene.netns, ifName: 'eth0' };
      await cni.add(first, att);
      const error = await caught(cni.add(second, att));
      expect(error).toBeInstanceOf(CniAttachmentExistsError);
      expect((error as Error).message).toBe(`interface name "eth0" of container "${att.containerId}" is already used by network "${first.name}"`);
      expect(await scene.hostLinkExists(secondBridge)).toBe(false); // the second chain never ran
      await cni.add(second, { ...att, ifName: 'eth1' });
      expect((await scene.addrs()).map((l) => l.ifname).sort()).toEqual(['eth0', 'eth1', 'lo']);
      await cni.del(second, { ...att, ifName: 'eth1' });
      await cni.del(first, att);
      expect((await scene.addrs()).map((l) => l.ifname)).toEqual(['lo']);
    });
  });
});
