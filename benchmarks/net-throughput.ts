/**
 * net-throughput: TCP throughput from a container in a sandbox to a peer namespace, for each
 * inter-network model, against a plain veth path between two namespaces on the host.
 *
 * Each model has its sandbox (1 vCPU, q35) on a CNI bridge network of its own, and a peer
 * namespace on that bridge. One test is `iperf3 -c PEER -t S -J` in a new container (a rootfs
 * holding the host's iperf3 and the libraries `ldd` names, shared by virtio-fs) against
 * `iperf3 -s -1` in the peer namespace; the figure is what the receiver counted
 * (`end.sum_received`), so container start-up is not in it. The peer ("veth-host") is the same
 * iperf3 test between two namespaces joined by one veth pair, nothing else. Variants run
 * interleaved after a warm-up round. Under TCG the guest's CPU bounds the VM paths: the ratios
 * say how far from the host's they are.
 *
 * Usage: npm run bench -- net-throughput [RUNS] [--seconds S]   (default 5 runs of 4 s)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CniConfig, CniRuntime } from '../src/network/cni/index.js';
import { addAddress, addVeth, createNetns, deleteLink, deleteNetns, setLink } from '../src/network/index.js';
import type { InterNetworkModel } from '../src/network/endpoints/endpoint.js';
import { Sandbox } from '../src/sandbox/index.js';
import { withCleanup } from './lib/cleanup.js';
import { benchArgs, interleave } from './lib/interleave.js';
import { machineFacts } from './lib/machine.js';
import { ratios, report } from './lib/report.js';
import { benchStateDir } from './lib/sandbox.js';

const USAGE = 'usage: npm run bench -- net-throughput [RUNS] [--seconds S]';
const PORT = '5201';
const MODELS: readonly InterNetworkModel[] = ['tcfilter', 'macvtap', 'bridge'];

/** An iperf3 server for one test in `netns` (`iperf3 -s -1`), once it listens. */
async function server(netns: string): Promise<ChildProcess> {
  const child = spawn('ip', ['netns', 'exec', netns, 'iperf3', '-s', '-1', '-p', PORT], { stdio: 'ignore' });
  for (let i = 0; i < 300; i++) {
    const ss = spawn('ip', ['netns', 'exec', netns, 'busybox', 'netstat', '-ltn'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    ss.stdout.on('data', (d: Buffer) => (out += d));
    await new Promise((r) => ss.on('close', r));
    if (out.includes(`:${PORT} `)) return child;
    await new Promise((r) => setTimeout(r, 10));
  }
  child.kill('SIGKILL');
  throw new Error(`iperf3 did not listen in ${netns}`);
}

/** MB/s the receiver counted, from `iperf3 -c ... -J` output. */
function throughput(json: string): number {
  const result = JSON.parse(json) as { end?: { sum_received?: { bits_per_second?: number } }; error?: string };
  const bps = result.end?.sum_received?.bits_per_second;
  if (typeof bps !== 'number') throw new Error(`iperf3 failed: ${result.error ?? json.slice(0, 200)}`);
  return bps / 8 / 1e6;
}

function clientArgs(ip: string, seconds: number): string[] {
  return ['-c', ip, '-p', PORT, '-t', String(seconds), '-J'];
}

/** One test between two host namespaces joined by a veth. */
async function hostTransfer(from: string, to: string, toIp: string, seconds: number): Promise<number> {
  const srv = await server(to);
  try {
    const client = spawn('ip', ['netns', 'exec', from, 'iperf3', ...clientArgs(toIp, seconds)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    client.stdout.on('data', (d: Buffer) => (out += d));
    await new Promise((resolve) => client.on('close', resolve));
    return throughput(out);
  } finally {
    srv.kill('SIGKILL');
  }
}

/** One test from a new container (the iperf3 rootfs) in `sandbox`. */
async function vmTransfer(sandbox: Sandbox, rootfs: string, to: string, toIp: string, seconds: number): Promise<number> {
  const srv = await server(to);
  try {
    const c = await sandbox.createContainer({ rootfs, process: { args: ['/usr/bin/iperf3', ...clientArgs(toIp, seconds)] }, stdio: { stdout: true, stderr: false } });
    let out = '';
    c.stdout!.on('data', (d: Buffer) => (out += d));
    const ended = new Promise((resolve) => c.stdout!.once('end', resolve));
    await c.start();
    await c.wait();
    await ended;
    await c.delete();
    return throughput(out);
  } finally {
    srv.kill('SIGKILL');
  }
}

/** A root filesystem holding the host's iperf3 and the shared libraries it needs (from `ldd`). */
async function iperfRootfs(dir: string): Promise<string> {
  const binary = '/usr/bin/iperf3';
  const ldd = spawn('ldd', [binary], { stdio: ['ignore', 'pipe', 'ignore'] });
  let out = '';
  ldd.stdout.on('data', (d: Buffer) => (out += d));
  await new Promise((r) => ldd.on('close', r));
  const files = [binary, ...[...out.matchAll(/(\/\S+) \(0x/gu)].map((m) => m[1] as string)];
  for (const file of files) {
    await fs.mkdir(path.join(dir, path.dirname(file)), { recursive: true });
    await fs.copyFile(await fs.realpath(file), path.join(dir, file));
    await fs.chmod(path.join(dir, file), 0o755);
  }
  for (const sub of ['proc', 'sys', 'dev', 'tmp', 'etc']) await fs.mkdir(path.join(dir, sub), { recursive: true });
  return dir;
}

export default async function main(args: string[]): Promise<void> {
  const { runs, options } = benchArgs(args, 5, { seconds: '4' }, USAGE);
  const seconds = Number(options.seconds);
  if (!Number.isInteger(seconds) || seconds < 1 || seconds > 60) throw new Error(`--seconds must be an integer in [1, 60]\n${USAGE}`);
  if (process.getuid?.() !== 0) throw new Error('net-throughput needs root (namespaces, CNI plugins, VMs)');

  await withCleanup(async (cleanup) => {
    const tag = randomBytes(2).toString('hex');
    const work = await fs.mkdtemp(path.join(os.tmpdir(), `vb${tag}-`));
    cleanup.add(`dir ${work}`, () => fs.rm(work, { recursive: true, force: true }));
    const cni = new CniRuntime({ cacheDir: path.join(work, 'cache') });
    const rootfs = await iperfRootfs(path.join(work, 'rootfs'));

    // The host peer: two namespaces and one veth between them.
    const [hostA, hostB] = [`vb${tag}-ha`, `vb${tag}-hb`];
    for (const name of [hostA, hostB]) {
      (await createNetns(name)).close();
      cleanup.add(`netns ${name}`, () => deleteNetns(name));
    }
    await addVeth({ name: 'eth0', netns: hostA, up: true, peer: { name: 'eth0', netns: hostB, up: true } });
    await addAddress('eth0', '10.239.0.1/24', { netns: hostA });
    await addAddress('eth0', '10.239.0.2/24', { netns: hostB });
    for (const name of [hostA, hostB]) await setLink('lo', { netns: name, up: true });

    // One bridge network per model with a peer namespace, then one sandbox on each. The state
    // directory is registered last, so its sandboxes (and their CNI DEL) go first at cleanup.
    const nets: { model: InterNetworkModel; network: CniConfig; peer: string; peerIp: string }[] = [];
    for (const [i, model] of MODELS.entries()) {
      const bridge = `vb${tag}b${i}`;
      cleanup.add(`bridge ${bridge}`, () => deleteLink(bridge).catch(() => undefined));
      const network = CniConfig.fromObject({
        cniVersion: '1.0.0',
        name: `vb${tag}-${model}`,
        plugins: [{ type: 'bridge', bridge, isGateway: false, ipMasq: false, ipam: { type: 'host-local', ranges: [[{ subnet: `10.238.${i}.0/24` }]], dataDir: path.join(work, 'ipam') } }],
      });
      const peer = `vb${tag}-p${i}`;
      (await createNetns(peer)).close();
      cleanup.add(`netns ${peer}`, () => deleteNetns(peer));
      const result = await cni.add(network, { containerId: peer, netns: `/run/netns/${peer}`, ifName: 'eth0' });
      cleanup.add(`CNI DEL of ${peer}`, () => cni.del(network, { containerId: peer, ifName: 'eth0' }));
      nets.push({ model, network, peer, peerIp: (result.ips[0]?.address ?? '').split('/')[0] as string });
    }
    const stateDir = await benchStateDir(cleanup, 'vb-nt-');
    const targets: { model: InterNetworkModel; sandbox: Sandbox; peer: string; peerIp: string }[] = [];
    for (const n of nets) {
      const sandbox = await Sandbox.create({ stateDir, cpus: 1, memoryMiB: 256, network: { cni: [{ config: n.network.toJSON(), model: n.model }] } });
      process.stderr.write(`  booting the ${n.model} sandbox\n`);
      await sandbox.start({ signal: cleanup.signal });
      targets.push({ model: n.model, sandbox, peer: n.peer, peerIp: n.peerIp });
    }

    const samples = await interleave(
      runs,
      [
        ['veth-host', () => hostTransfer(hostA, hostB, '10.239.0.2', seconds)],
        ...targets.map((t) => [t.model, () => vmTransfer(t.sandbox, rootfs, t.peer, t.peerIp, seconds)] as const),
      ],
      { signal: cleanup.signal },
    );
    const results = samples.results();
    report(
      'net-throughput',
      'MB/s',
      runs,
      results,
      ratios(results, MODELS.map((m) => [m, 'veth-host'] as const)),
      { seconds_per_test: seconds, tool: 'iperf3 -c PEER -t SECONDS (receiver side)', machine: await machineFacts() },
    );
  });
}
