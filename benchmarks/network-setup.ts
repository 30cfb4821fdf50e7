/**
 * network-setup: the cost of one sandbox network, set up and torn down.
 *
 * One sandbox network is: a netns, a veth with its peer in the netns, a tap in the netns, the
 * links up, 2 ingress qdiscs and 2 u32/mirred redirect filters. Variants, interleaved after one
 * warm-up round:
 * - vmpod: `Network.create()` / `destroy()` from Node through the library;
 * - ip-tc: the same steps by spawning `ip` and `tc`, the ordinary way;
 * - cni-bridge: Debian's containernetworking-plugins bridge + host-local, ADD and DEL into a
 *   fresh netns (made outside the timing), executed per the CNI spec from /usr/lib/cni.
 * And the full path of a sandbox's network, set up and torn down:
 * - sandbox-vmpod: what a sandbox's network resource does before its VM boots, through the
 *   library: `Network.open()` (new netns), `addCni()` (bridge + host-local through CniRuntime,
 *   result cached on disk), a scan of the namespace, `plug()` of eth0 with the tcfilter model
 *   (tap + 2 ingress qdiscs + 2 redirect filters, queue fd open); teardown `Network.release()`
 *   (tc and tap removed, CNI DEL, netns deleted);
 * - sandbox-tools: the same by spawning tools the ordinary way: `ip netns add`, the bridge plugin
 *   spawned with the CNI environment, `ip -j addr`/`ip -j route` (what the guest mirrors),
 *   `ip tuntap add`, `ip link set up`, 2 `tc qdisc add` and 2 `tc filter add`; teardown
 *   `ip link del`, the plugin's DEL, `ip netns del`.
 *
 * Usage: npm run bench -- network-setup [RUNS]   (default 50)
 */
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { closeSync } from 'node:fs';
import { createNetns, deleteLink, deleteNetns, Network, type NetworkRecord } from '../src/network/index.js';
import { CniConfig } from '../src/network/cni/index.js';
import { ratios, report, Samples } from './lib/report.js';

const run = promisify(execFile);
const CNI_PATH = '/usr/lib/cni';
const GROUP = 30318; // not NETWORK_LINK_GROUP: the ip-tc variant must not touch vmpod's links

const now = (): number => performance.now();

async function sh(cmd: string, args: string[]): Promise<void> {
  await run(cmd, args);
}

/** The ip/tc equivalent of Network.create, step by step. */
async function ipTcSetup(ns: string, veth: string): Promise<void> {
  await sh('ip', ['netns', 'add', ns]);
  await sh('ip', ['link', 'add', veth, 'group', `${GROUP}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns, 'group', `${GROUP}`]);
  await sh('ip', ['-n', ns, 'tuntap', 'add', 'dev', 'tap0', 'mode', 'tap', 'vnet_hdr']);
  await sh('ip', ['link', 'set', veth, 'up']);
  await sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
  await sh('ip', ['-n', ns, 'link', 'set', 'tap0', 'up', 'group', `${GROUP}`]);
  await sh('tc', ['-n', ns, 'qdisc', 'add', 'dev', 'eth0', 'ingress']);
  await sh('tc', ['-n', ns, 'qdisc', 'add', 'dev', 'tap0', 'ingress']);
  for (const [from, to] of [['eth0', 'tap0'], ['tap0', 'eth0']] as const) {
    await sh('tc', ['-n', ns, 'filter', 'add', 'dev', from, 'parent', 'ffff:', 'protocol', 'all', 'u32', 'match', 'u8', '0', '0', 'action', 'mirred', 'egress', 'redirect', 'dev', to]);
  }
}

/** The tools equivalent of a sandbox network's setup (see the header). */
async function toolsSandboxSetup(ns: string, config: object, containerId: string): Promise<void> {
  await sh('ip', ['netns', 'add', ns]);
  await cni('ADD', config, containerId, `/run/netns/${ns}`);
  await sh('ip', ['-n', ns, '-j', 'addr', 'show']);
  await sh('ip', ['-n', ns, '-j', 'route', 'show', 'table', 'all']);
  await sh('ip', ['-n', ns, 'tuntap', 'add', 'dev', 'vmtap0', 'mode', 'tap', 'vnet_hdr']);
  await sh('ip', ['-n', ns, 'link', 'set', 'vmtap0', 'up']);
  await sh('tc', ['-n', ns, 'qdisc', 'add', 'dev', 'eth0', 'ingress']);
  await sh('tc', ['-n', ns, 'qdisc', 'add', 'dev', 'vmtap0', 'ingress']);
  for (const [from, to] of [['eth0', 'vmtap0'], ['vmtap0', 'eth0']] as const) {
    await sh('tc', ['-n', ns, 'filter', 'add', 'dev', from, 'parent', 'ffff:', 'protocol', 'all', 'u32', 'match', 'u8', '0', '0', 'action', 'mirred', 'egress', 'redirect', 'dev', to]);
  }
}

async function toolsSandboxTeardown(ns: string, config: object, containerId: string): Promise<void> {
  await sh('ip', ['-n', ns, 'link', 'del', 'vmtap0']);
  await cni('DEL', config, containerId, `/run/netns/${ns}`);
  await sh('ip', ['netns', 'del', ns]);
}

async function ipTcTeardown(ns: string): Promise<void> {
  await sh('ip', ['-n', ns, 'link', 'del', 'group', `${GROUP}`]);
  await sh('ip', ['netns', 'del', ns]);
}

/** Runs one CNI plugin command per the spec: CNI_* environment, config on stdin, result on stdout. */
function cni(command: 'ADD' | 'DEL', config: object, containerId: string, netnsPath: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const plugin = (config as { type: string }).type;
    const child = spawn(path.join(CNI_PATH, plugin), [], {
      env: {
        PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin',
        CNI_COMMAND: command,
        CNI_CONTAINERID: containerId,
        CNI_NETNS: netnsPath,
        CNI_IFNAME: 'eth0',
        CNI_PATH,
      },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`CNI ${command} exited ${code}: ${out}${err}`))));
    child.stdin.end(JSON.stringify(config));
  });
}

export default async function main(args: string[]): Promise<void> {
  const runs = Number(args[0] ?? 50);
  if (!Number.isInteger(runs) || runs < 1) throw new Error('RUNS must be a positive integer');
  if (process.getuid?.() !== 0) throw new Error('network-setup needs root (it creates namespaces and links)');

  const tag = randomBytes(2).toString('hex');
  const bridge = `vb${tag}br`;
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'vmpod-bench-cni-'));
  const cniConfig = {
    cniVersion: '1.0.0',
    name: `vmpod-bench-${tag}`,
    type: 'bridge',
    bridge,
    isGateway: false,
    ipMasq: false,
    ipam: { type: 'host-local', ranges: [[{ subnet: '10.231.0.0/16' }]], dataDir },
  };
  const samples = new Samples();
  const leftovers = {
    networks: new Set<string>(),
    ipNetns: new Set<string>(),
    cniNetns: new Set<string>(),
    sandboxNetworks: new Map<string, NetworkRecord>(),
    toolsNetns: new Set<string>(),
  };
  const cniCache = path.join(dataDir, 'cache');
  const conf = CniConfig.fromObject({ cniVersion: cniConfig.cniVersion, name: cniConfig.name, plugins: [{ ...cniConfig, cniVersion: undefined, name: undefined }] });

  try {
    for (let i = 0; i <= runs; i++) {
      const warm = i === 0; // the warm-up round is not counted
      const id = `${tag}${i.toString(36)}`;

      // vmpod
      {
        const ns = `vb-${id}-m`;
        leftovers.networks.add(ns);
        let t = now();
        const net = await Network.create({ netns: ns, veth: { name: `vb${id}m` } });
        const setup = now() - t;
        t = now();
        await net.destroy();
        const teardown = now() - t;
        leftovers.networks.delete(ns);
        if (!warm) {
          samples.add('vmpod-setup', setup);
          samples.add('vmpod-teardown', teardown);
        }
      }

      // ip-tc
      {
        const ns = `vb-${id}-i`;
        leftovers.ipNetns.add(ns);
        let t = now();
        await ipTcSetup(ns, `vb${id}i`);
        const setup = now() - t;
        t = now();
        await ipTcTeardown(ns);
        const teardown = now() - t;
        leftovers.ipNetns.delete(ns);
        if (!warm) {
          samples.add('ip-tc-setup', setup);
          samples.add('ip-tc-teardown', teardown);
        }
      }

      // cni-bridge: ADD and DEL timed; the fresh netns is made and removed outside the timing.
      {
        const ns = `vb-${id}-c`;
        const netns = await createNetns(ns);
        netns.close();
        leftovers.cniNetns.add(ns);
        const containerId = `vmpod-bench-${id}`;
        let t = now();
        await cni('ADD', cniConfig, containerId, netns.path);
        const add = now() - t;
        t = now();
        await cni('DEL', cniConfig, containerId, netns.path);
        const del = now() - t;
        await deleteNetns(ns);
        leftovers.cniNetns.delete(ns);
        if (!warm) {
          samples.add('cni-bridge-add', add);
          samples.add('cni-bridge-del', del);
        }
      }
      // sandbox-vmpod: the network resource's path through the library.
      {
        const ns = `vb-${id}-s`;
        let record: NetworkRecord | undefined;
        let t = now();
        const net = await Network.open({ netns: ns, create: true, containerId: `vmpod-bench-${id}-s`, cniCacheDir: cniCache, save: async (r) => void (record = r) });
        leftovers.sandboxNetworks.set(ns, net.record);
        await net.addCni(conf, { ifName: 'eth0' });
        const interfaces = await net.scan();
        const { fds } = await net.plug('eth0', { origin: { type: 'cni', network: conf.name }, queues: 1, model: 'tcfilter' }, interfaces);
        const setup = now() - t;
        for (const fd of fds) closeSync(fd);
        net.close();
        t = now();
        await Network.release(record ?? net.record);
        const teardown = now() - t;
        leftovers.sandboxNetworks.delete(ns);
        if (!warm) {
          samples.add('sandbox-vmpod-setup', setup);
          samples.add('sandbox-vmpod-teardown', teardown);
        }
      }

      // sandbox-tools: the same by spawning ip, tc and the plugin.
      {
        const ns = `vb-${id}-t`;
        const containerId = `vmpod-bench-${id}-t`;
        leftovers.toolsNetns.add(ns);
        let t = now();
        await toolsSandboxSetup(ns, cniConfig, containerId);
        const setup = now() - t;
        t = now();
        await toolsSandboxTeardown(ns, cniConfig, containerId);
        const teardown = now() - t;
        leftovers.toolsNetns.delete(ns);
        if (!warm) {
          samples.add('sandbox-tools-setup', setup);
          samples.add('sandbox-tools-teardown', teardown);
        }
      }
      if (!warm && i % 10 === 0) process.stderr.write(`  ${i}/${runs}\n`);
    }
  } finally {
    for (const ns of leftovers.networks) await Network.teardown(ns).catch(() => undefined);
    for (const ns of leftovers.ipNetns) {
      await sh('ip', ['-n', ns, 'link', 'del', 'group', `${GROUP}`]).catch(() => undefined);
      await sh('ip', ['netns', 'del', ns]).catch(() => undefined);
    }
    for (const ns of leftovers.cniNetns) {
      await cni('DEL', cniConfig, `vmpod-bench-${ns.slice(3, -2)}`, `/run/netns/${ns}`).catch(() => undefined);
      await deleteNetns(ns).catch(() => undefined);
    }
    for (const record of leftovers.sandboxNetworks.values()) await Network.release(record).catch(() => undefined);
    for (const ns of leftovers.toolsNetns) {
      await cni('DEL', cniConfig, `vmpod-bench-${ns.slice(3, -2)}-t`, `/run/netns/${ns}`).catch(() => undefined);
      await sh('ip', ['netns', 'del', ns]).catch(() => undefined);
    }
    await deleteLink(bridge).catch(() => undefined);
    await rm(dataDir, { recursive: true, force: true });
  }

  const results = samples.results();
  const r = ratios(results, [
    ['ip-tc-setup', 'vmpod-setup'],
    ['cni-bridge-add', 'vmpod-setup'],
    ['ip-tc-teardown', 'vmpod-teardown'],
    ['cni-bridge-del', 'vmpod-teardown'],
    ['sandbox-tools-setup', 'sandbox-vmpod-setup'],
    ['sandbox-tools-teardown', 'sandbox-vmpod-teardown'],
  ]);
  const { stdout: kernel } = await run('uname', ['-r']);
  report('network-setup', 'ms', runs, results, r, { machine: { cpus: os.cpus().length, kernel: kernel.trim(), node: process.version } });
}
