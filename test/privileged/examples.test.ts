/**
 * The scripts in examples/ run as a user runs them: each in a Node process of its own (tsx's
 * loader, `vmpod` mapped to this checkout's src/ by examples/tsconfig.json), against real VMs,
 * with the state of its sandboxes in a directory of the test's ($VMPOD_STATE_DIR). Each must
 * exit 0, print what it says it does, and leave nothing: no VM, daemon, mount, state, and for
 * the network and DPDK ones no namespace, link, address reservation, hugepage or DPDK folder.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Testpmd, testpmdSkipReason } from '../../benchmarks/lib/testpmd.js';
import { hugepagePool } from '../../src/devices/hugepages.js';
import { skipReason as cniSkip, sh, World } from './network-sandbox/fixture.js';
import { tearDown } from './nfv/testpmd-fixture.js';
import { deleteAllAndCheck, makeStateDir, runcSpecBundle, skipReason as vmSkip } from './sandbox/fixture.js';

const EXAMPLES = path.resolve('examples');
const dpdkSkip = vmSkip ?? (await testpmdSkipReason());

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs examples/NAME.ts with `args`, its sandboxes' state under `stateDir`. */
function runExample(name: string, args: string[], stateDir: string): Promise<Ran> {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(EXAMPLES, `${name}.ts`), ...args], {
    env: { ...process.env, VMPOD_STATE_DIR: stateDir, TSX_TSCONFIG_PATH: path.join(EXAMPLES, 'tsconfig.json') },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Names of the network namespaces vmpod made (`vmpod-ID`). */
async function vmpodNamespaces(): Promise<string[]> {
  return (JSON.parse((await sh('ip', ['-j', 'netns', 'list'])) || '[]') as { name: string }[]).map((n) => n.name).filter((n) => n.startsWith('vmpod-'));
}

describe.skipIf(vmSkip)(`examples/${vmSkip ? ` (skipped: ${vmSkip})` : ''}`, () => {
  let stateDir: string;

  beforeEach(async () => {
    stateDir = await makeStateDir();
  });

  afterEach(() => deleteAllAndCheck(stateDir));

  it('two-containers.ts: a server and a client in one sandbox', async () => {
    const r = await runExample('two-containers', [], stateDir);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^client: exit 0, got "hello from web"\nsandbox vp-[0-9a-f]{12}: running, containers: web \(running\)\n$/u);
  });

  it('volumes.ts: a shared directory, a tmpfs and hugepages', async () => {
    const hostDir = await fs.mkdtemp(path.join(stateDir, 'data-'));
    const r = await runExample('volumes', [hostDir], stateDir);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.split('\n');
    expect(lines.slice(0, 3)).toEqual([
      expect.stringMatching(/^volume data \(directory\) at \/run\/vmpod\/\S+ in the guest$/u),
      expect.stringMatching(/^volume scratch \(tmpfs\) at \/run\/vmpod\/\S+ in the guest$/u),
      expect.stringMatching(/^volume huge \(hugepages\) at \/run\/vmpod\/\S+ in the guest$/u),
    ]);
    expect(r.stdout).toMatch(/ 4096 +\d+ +\d+ +\d+% \/huge\n/u); // df: 4 MiB of hugetlbfs
    expect(r.stdout).toMatch(/^\S+ \/huge hugetlbfs /mu);
    expect(r.stdout).toContain('second container read from the tmpfs: kept\n');
    const written = (await fs.readFile(path.join(hostDir, 'from-guest.txt'), 'utf8')).trim();
    expect(written).toMatch(/^written in \d+\.\d+/u);
    expect(r.stdout).toContain(`host read from ${path.join(hostDir, 'from-guest.txt')}: ${written}\n`);
  });

  describe.skipIf(cniSkip)(`vnf-cni.ts${cniSkip ? ` (skipped: ${cniSkip})` : ''}`, () => {
    let world: World;

    beforeAll(async () => {
      world = await new World().init();
    });

    afterAll(async () => {
      await world.cleanup();
    });

    it('a VNF on a CNI bridge, a second network hot plugged, traffic to a peer on each', async () => {
      const namespacesBefore = await vmpodNamespaces();
      const nets = [world.bridgeNet(), world.bridgeNet()];
      const files: string[] = [];
      for (const [i, net] of nets.entries()) {
        const file = path.join(world.dir, `net${i}.conflist`);
        await fs.writeFile(file, JSON.stringify(net.config));
        files.push(file);
      }
      const peers = [await world.peer(nets[0]!, 'p0'), await world.peer(nets[1]!, 'p1')];
      const r = await runExample('vnf-cni', [...files, peers[0]!.ip, peers[1]!.ip], stateDir);
        expect(r.code, r.stderr).toBe(0);
      const [net0, net1] = nets.map((n) => n.net.replaceAll('.', '\\.'));
      expect(r.stdout).toMatch(new RegExp(`^eth0: ${net0}\\.\\d+/24\\n`, 'u'));
      expect(r.stdout).toMatch(new RegExp(`\\neth1: ${net1}\\.\\d+/24 \\(hot plugged\\)\\n`, 'u'));
      // The running VNF's view: both interfaces with their addresses.
      expect(r.stdout).toMatch(new RegExp(`\\d+: eth0 +inet ${net0}\\.\\d+/24 `, 'u'));
      expect(r.stdout).toMatch(new RegExp(`\\d+: eth1 +inet ${net1}\\.\\d+/24 `, 'u'));
      for (const peer of peers) expect(r.stdout).toContain(`ping ${peer.ip}: exit 0, 3 received\n`);
      expect(r.stdout).toMatch(/\nvnf exited 0\n$/u);
      expect(await vmpodNamespaces()).toEqual(namespacesBefore);
      // host-local keeps a file per reserved address, naming its owner: only the peers' are left.
      const owners: string[] = [];
      for (const network of await fs.readdir(world.ipamDir)) {
        for (const file of (await fs.readdir(path.join(world.ipamDir, network))).filter((f) => /^\d+\.\d+\.\d+\.\d+$/u.test(f))) {
          owners.push((await fs.readFile(path.join(world.ipamDir, network, file), 'utf8')).split(/\s/u)[0]!);
        }
      }
      expect(owners.sort()).toEqual([`${world.prefix}-p0`, `${world.prefix}-p1`]);
    });
  });

  describe.skipIf(dpdkSkip)(`dpdk-vhost-user.ts${dpdkSkip ? ` (skipped: ${dpdkSkip})` : ''}`, () => {
    it('a guest on hugepages with a vhost-user NIC on testpmd, pinging through it', async () => {
      const prefix = `vt${randomBytes(2).toString('hex')}x`;
      const poolBefore = (await hugepagePool('2M')).total;
      let testpmd: Testpmd | undefined;
      try {
        const work = await fs.mkdtemp(path.join(stateDir, 'work-'));
        const bundle = await runcSpecBundle(path.join(work, 'bundle'), (spec) => {
          spec.process.terminal = false;
          for (const set of ['bounding', 'effective', 'permitted']) spec.process.capabilities[set].push('CAP_NET_ADMIN', 'CAP_NET_RAW');
        });
        testpmd = await Testpmd.start({ socket: path.join(work, 'vhost0.sock'), forwardMode: 'icmpecho', prefix });
        const r = await runExample('dpdk-vhost-user', [testpmd.options.socket, bundle], stateDir);
            expect(r.code, r.stderr).toBe(0);
        expect(r.stdout).toMatch(/^vnic0: guest PCI 0000:[0-9a-f]{2}:00\.0, interface eth\d+\n/u);
        expect(r.stdout).toContain('3 packets transmitted, 3 packets received');
        expect(r.stdout).toMatch(/\nHugePages_Total: +4\n1\napp: exit 0\n$/u);
        expect((await testpmd.stats()).rxPackets).toBeGreaterThanOrEqual(4); // ARP and the echo requests reached the backend
      } finally {
        await tearDown({ sandbox: undefined, testpmd, stateDir, poolBefore, prefix });
        stateDir = await makeStateDir(); // tearDown checked and removed it; afterEach gets a fresh one
      }
    });
  });
});
