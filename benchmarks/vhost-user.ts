/**
 * vhost-user: packets per second from a guest to a DPDK backend over a vhost-user NIC,
 * against the same guest sending over the tap+tcfilter path (the host `Network` v1: netns,
 * veth, tap, tc mirred redirects), in one sandbox and one run.
 *
 * Setup (not timed): dpdk-testpmd (`--forward-mode=rxonly`, its own hugepages, file prefix and
 * hugetlbfs) listening on a vhost-user socket; a `Network` whose tap fds go to the VM as a
 * virtio-net device (`extraDevices`); a q35 sandbox with guest RAM on hugepages and a
 * vhost-user NIC on testpmd's socket; one long-running container (CAP_NET_RAW/ADMIN) holding a
 * static packet generator (benchmarks/guest/pktgen.c: 64-byte broadcast frames of EtherType
 * 0x88b5 through AF_PACKET, for `--seconds`).
 *
 * Variants, interleaved after one warm-up round, each an `exec` of the generator on one NIC:
 * - vhost-user: frames testpmd received (`show port stats 0`, RX-packets) / sending time;
 * - tap-tcfilter: frames the host end of the veth received (`statistics/rx_packets`) / sending time.
 * Both count at the receiver; what the guest sent is reported too (`*_sent_pps`). Under TCG the
 * guest's CPU bounds both paths; the ratio is what matters.
 *
 * Usage: npm run bench -- vhost-user [RUNS] [--seconds S] [--cache GUEST_CACHE_DIR]   (default 5 runs of 2 s)
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Sandbox } from '../src/sandbox/index.js';
import { Network } from '../src/network/network.js';
import type { Container } from '../src/container/container.js';
import { Testpmd, TESTPMD } from './lib/testpmd.js';
import { busyboxBundle } from './lib/bundle.js';
import { withCleanup } from './lib/cleanup.js';
import { benchArgs, interleave } from './lib/interleave.js';
import { machineFacts } from './lib/machine.js';
import { ratios, report, summarize } from './lib/report.js';
import { benchStateDir } from './lib/sandbox.js';

const exec = promisify(execFile);
const USAGE = 'usage: npm run bench -- vhost-user [RUNS] [--seconds S] [--cache GUEST_CACHE_DIR]';
const VHOST_MAC = '52:54:00:b0:00:01';
const TAP_MAC = '52:54:00:b0:00:02';

async function collect(stream: NodeJS.ReadableStream | null): Promise<string> {
  if (!stream) return '';
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString();
}

/** Runs `args` in the container; throws on a non-zero exit. */
async function sh(container: Container, script: string): Promise<string> {
  const p = await container.exec({ args: ['sh', '-c', script] });
  const [out, err, status] = await Promise.all([collect(p.stdout), collect(p.stderr), p.wait()]);
  if (status.exitCode !== 0) throw new Error(`guest: ${script}: exit ${status.exitCode}: ${err}`);
  return out;
}

async function rxPackets(ifname: string): Promise<number> {
  return Number(await fs.readFile(`/sys/class/net/${ifname}/statistics/rx_packets`, 'utf8'));
}

export default async function main(args: string[]): Promise<void> {
  const { runs, options } = benchArgs(args, 5, { seconds: '2', cache: '' }, USAGE);
  const seconds = Number(options.seconds);
  if (!(seconds > 0 && seconds <= 60)) throw new Error(`--seconds must be in (0, 60]\n${USAGE}`);
  const facts = await machineFacts();
  await fs.access(TESTPMD).catch(() => {
    throw new Error(`${TESTPMD} is missing: install dpdk-dev (scripts/setup-host.sh)`);
  });
  const { stdout: pmdVersion } = await exec('dpkg-query', ['-W', '-f', '${Version}', 'dpdk-dev']).catch(() => ({ stdout: 'unknown' }));

  await withCleanup(async (cleanup) => {
    const { signal } = cleanup;
    const tag = randomBytes(2).toString('hex');
    const work = await fs.mkdtemp(path.join(os.tmpdir(), 'vb-vhu-'));
    cleanup.add(`work dir ${work}`, () => fs.rm(work, { recursive: true, force: true }));
    const bundle = await busyboxBundle(path.join(work, 'bundle'), (spec) => {
      spec.process.args = ['sleep', '3600'];
      const caps = spec.process.capabilities as Record<string, string[]>;
      for (const set of ['bounding', 'effective', 'permitted']) caps[set]?.push('CAP_NET_ADMIN', 'CAP_NET_RAW');
    });
    await exec('gcc', ['-static', '-O2', '-o', path.join(bundle, 'rootfs/bin/pktgen'), path.join(import.meta.dirname, 'guest/pktgen.c')]);

    const testpmd = await Testpmd.start({ socket: path.join(work, 'vhost.sock'), forwardMode: 'rxonly', prefix: `vb${tag}` });
    cleanup.add('testpmd', () => testpmd.stop());

    const network = await Network.create({ netns: `vb${tag}`, veth: { name: `vb${tag}h`, mac: TAP_MAC } });
    cleanup.add(`network vb${tag}`, () => network.destroy());
    const hostVeth = network.endpoint.hostVeth;

    const stateDir = await benchStateDir(cleanup);
    const sandbox = await Sandbox.create(
      {
        stateDir,
        memoryMiB: 256,
        hugepages: true,
        vhostUser: [{ id: 'vhu0', socket: testpmd.options.socket, mac: VHOST_MAC }],
        extraDevices: [{ kind: 'virtio-net', id: 'tapnic', tap: { fds: [...network.tapFds] }, mac: TAP_MAC, rootPort: true }],
        ...(options.cache ? { guest: { cacheDir: options.cache } } : {}),
      },
      { signal },
    );
    cleanup.add(`sandbox ${sandbox.id}`, () => sandbox.delete({ force: true }));
    await sandbox.start({ signal });
    network.closeTapFds(); // QEMU has its own copies

    const container = await sandbox.createContainer({ bundle, stdio: { stdout: false, stderr: false } });
    await container.start();
    const ifOf = async (mac: string): Promise<string> =>
      (await sh(container, `for d in /sys/class/net/*; do [ "$(cat $d/address)" = "${mac}" ] && basename $d; done; true`)).trim();
    const vhostIf = await ifOf(VHOST_MAC);
    const tapIf = await ifOf(TAP_MAC);
    await sh(container, `ip link set ${vhostIf} up && ip link set ${tapIf} up`);

    const sent: Record<string, number[]> = { 'vhost-user': [], 'tap-tcfilter': [] };
    const measure = async (name: 'vhost-user' | 'tap-tcfilter', ifname: string, received: () => Promise<number>): Promise<number> => {
      const before = await received();
      const [count, ns] = (await sh(container, `/bin/pktgen ${ifname} ${seconds}`)).trim().split(' ').map(Number) as [number, number];
      // Let the last frames drain through the backend before reading its counter.
      await new Promise((r) => setTimeout(r, 200));
      const got = (await received()) - before;
      sent[name]!.push(count / (ns / 1e9));
      return got / (ns / 1e9);
    };
    const samples = await interleave(
      runs,
      [
        ['vhost-user', () => measure('vhost-user', vhostIf, async () => (await testpmd.stats()).rxPackets)],
        ['tap-tcfilter', () => measure('tap-tcfilter', tapIf, () => rxPackets(hostVeth))],
      ],
      { signal, digits: 0 },
    );
    const results = samples.results();
    report('vhost-user', 'packets/s (received)', runs, results, ratios(results, [['vhost-user', 'tap-tcfilter']]), {
      frame_bytes: 64,
      seconds_per_run: seconds,
      vhost_user_sent_pps: summarize(sent['vhost-user']!.slice(1)),
      tap_tcfilter_sent_pps: summarize(sent['tap-tcfilter']!.slice(1)),
      guest_ram: 'hugepages 2M (shared memory-backend-file)',
      dpdk: pmdVersion.trim(),
      ...facts,
    });
  });
}
