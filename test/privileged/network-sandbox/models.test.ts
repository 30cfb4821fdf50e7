/**
 * The inter-network models in one sandbox with three CNI networks, one model each: macvtap
 * (passthru macvtap on the veth), bridge (bridge + tap in the namespace, the veth's MAC moved
 * to the guest) and none (a tap joined to nothing, until the test joins it with tc itself).
 * Traffic to a peer on each network; the endpoints survive a stop and start of the sandbox; a
 * cold-plugged NIC is removed; a namespace deleted behind vmpod's back is set up again.
 * The tests share one sandbox, running with all three interfaces at the start of each test
 * (beforeEach); a test that changes it undoes the change (the tc filters of the none model) or
 * works on a sandbox of its own (the NIC removal).
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { CniPluginError } from '../../../src/network/cni/index.js';
import { World, ipj, runIn, sh, skipReason, type BridgeNet, type Peer } from './fixture.js';

describe.skipIf(skipReason)(`inter-network models in a sandbox${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  const world = new World();
  const nets: BridgeNet[] = [];
  const peers: Peer[] = [];
  let sandbox: Sandbox;
  let ns: string;
  /** Sandboxes of single tests, for the final check. */
  const ownIds: string[] = [];

  beforeAll(async () => {
    await world.init();
    for (let i = 0; i < 4; i++) {
      nets.push(world.bridgeNet());
      peers.push(await world.peer(nets[i]!, `peer${i}`));
      if (i < 3) await world.httpd(peers[i]!.netns, { 'who.txt': `peer ${i}\n` });
    }
    sandbox = await Sandbox.create({
      stateDir: world.stateDir,
      network: {
        cni: [
          { config: nets[0]!.config, ifName: 'eth0', model: 'macvtap' },
          { config: nets[1]!.config, ifName: 'eth1', model: 'bridge' },
          { config: nets[2]!.config, ifName: 'eth2', model: 'none' },
        ],
      },
    });
    await sandbox.start();
    ns = `vmpod-${sandbox.id}`;
  });

  // Whichever test ran before: the shared sandbox runs (a test may have stopped it).
  beforeEach(async () => {
    if (sandbox.state !== 'running') await sandbox.start();
    expect((await sandbox.networks()).map((n) => [n.name, n.plugged])).toEqual([
      ['eth0', true],
      ['eth1', true],
      ['eth2', true],
    ]);
  });

  afterAll(async () => {
    try {
      await sandbox?.delete({ force: true });
      await world.expectNothingLeft(sandbox ? [sandbox.id, ...ownIds] : ownIds);
    } finally {
      await world.cleanup();
    }
  });

  it('plugs each interface with its model and keeps its MAC for the guest', async () => {
    const byName = Object.fromEntries((await sandbox.networks()).map((n) => [n.name, n]));
    expect(byName['eth0']).toMatchObject({ model: 'macvtap', hostLinks: ['vmmvt0'] });
    expect(byName['eth1']).toMatchObject({ model: 'bridge', hostLinks: ['vmbr1', 'vmtap1'] });
    expect(byName['eth2']).toMatchObject({ model: 'none', hostLinks: ['vmtap2'] });
    const links = Object.fromEntries((await ipj<any[]>(['-d', 'link', 'show'], ns)).map((l) => [l.ifname, l]));
    expect(links['vmmvt0'].linkinfo.info_kind).toBe('macvtap');
    expect(links['vmmvt0'].linkinfo.info_data.mode).toBe('passthru');
    expect(links['vmmvt0'].address).toBe(byName['eth0']!.mac);
    // bridge: the veth is a port of vmbr1 with a random MAC; its own MAC is the guest's.
    expect(links['eth1'].master).toBe('vmbr1');
    expect(links['eth1'].address).not.toBe(byName['eth1']!.mac);
    expect(links['vmtap1'].master).toBe('vmbr1');
    expect(links['vmtap2'].master).toBeUndefined();
    const guest = Object.fromEntries((await (await sandbox.agent()).listInterfaces()).interfaces.map((i) => [i.name, i]));
    for (const name of ['eth0', 'eth1', 'eth2']) expect(guest[name]?.mac).toBe(byName[name]!.mac);
  });

  it('runs CNI CHECK per network: ok, skipped where the bridge model changed the MAC, failed (typed) once an address went', async () => {
    expect(await sandbox.checkNetwork()).toEqual([
      { network: nets[0]!.name, ifName: 'eth0', status: 'ok' },
      { network: nets[1]!.name, ifName: 'eth1', status: 'skipped', reason: expect.stringMatching(/bridge model gave eth1 another MAC/u) },
      { network: nets[2]!.name, ifName: 'eth2', status: 'ok' },
    ]);
    // Someone removes the address the plugin gave eth2: its CHECK says so.
    const [address] = (await sandbox.networks()).find((n) => n.name === 'eth2')!.addresses;
    await sh('ip', ['-n', ns, 'addr', 'del', address!, 'dev', 'eth2']);
    try {
      const [outcome] = await sandbox.checkNetwork('eth2');
      expect(outcome).toMatchObject({ ifName: 'eth2', status: 'failed' });
      expect(outcome!.error).toBeInstanceOf(CniPluginError);
      expect(outcome!.error!.message).toMatch(/bridge/u);
    } finally {
      await sh('ip', ['-n', ns, 'addr', 'add', address!, 'dev', 'eth2']);
    }
    expect(await sandbox.checkNetwork(nets[2]!.name)).toEqual([{ network: nets[2]!.name, ifName: 'eth2', status: 'ok' }]);
  });

  it('passes traffic through the macvtap and bridge models', async () => {
    for (const i of [0, 1]) {
      const r = await runIn(sandbox, ['sh', '-c', `ping -c 2 -W 5 ${peers[i]!.ip} && wget -q -O - http://${peers[i]!.ip}:8080/who.txt`]);
      expect(r.exitCode, `eth${i}: ${r.stdout}${r.stderr}`).toBe(0);
      expect(r.stdout).toContain(`peer ${i}\n`);
    }
  });

  it('passes nothing through the none model until the user joins the tap to the interface', async () => {
    const before = await runIn(sandbox, ['ping', '-c', '1', '-W', '2', peers[2]!.ip]);
    expect(before.exitCode).not.toBe(0);
    // What a user of "none" does: their own plumbing, here tc redirects both ways.
    for (const [from, to] of [['eth2', 'vmtap2'], ['vmtap2', 'eth2']]) {
      await sh('tc', ['-n', ns, 'qdisc', 'add', 'dev', from!, 'ingress']);
      await sh('tc', ['-n', ns, 'filter', 'add', 'dev', from!, 'parent', 'ffff:', 'protocol', 'all', 'u32', 'match', 'u8', '0', '0', 'action', 'mirred', 'egress', 'redirect', 'dev', to!]);
    }
    try {
      const after = await runIn(sandbox, ['ping', '-c', '2', '-W', '5', peers[2]!.ip]);
      expect(after.exitCode, after.stdout + after.stderr).toBe(0);
    } finally {
      // The other tests find eth2 joined to nothing again.
      for (const dev of ['eth2', 'vmtap2']) await sh('tc', ['-n', ns, 'qdisc', 'del', 'dev', dev, 'ingress']);
    }
  });

  it('keeps the endpoints across a stop and start: same addresses, traffic passes again', async () => {
    const before = await sandbox.networks();
    await sandbox.stop();
    expect((await sandbox.networks()).every((n) => !n.plugged)).toBe(true);
    await sandbox.start();
    const after = await sandbox.networks();
    expect(after.map((n) => [n.name, n.mac, n.addresses, n.plugged])).toEqual(before.map((n) => [n.name, n.mac, n.addresses, true]));
    for (const i of [0, 1]) {
      const r = await runIn(sandbox, ['wget', '-q', '-O', '-', `http://${peers[i]!.ip}:8080/who.txt`]);
      expect(r.stdout, r.stderr).toBe(`peer ${i}\n`);
    }
  });
  it('removes a cold-plugged NIC: unplugged from the VM, its tap gone, CNI DEL run', async () => {
    // A sandbox of its own (the shared one keeps its three NICs): eth0 and eth3 cold-plugged.
    const own = await Sandbox.create({
      stateDir: world.stateDir,
      network: {
        cni: [
          { config: nets[0]!.config, ifName: 'eth0', model: 'macvtap' },
          { config: nets[3]!.config, ifName: 'eth3', model: 'none' },
        ],
      },
    });
    ownIds.push(own.id);
    try {
      await own.start();
      const ownNs = `vmpod-${own.id}`;
      const eth3 = (await own.networks()).find((n) => n.name === 'eth3')!;
      expect(eth3).toMatchObject({ model: 'none', plugged: true, hostLinks: ['vmtap1'] });
      const ipamDir = path.join(world.ipamDir, nets[3]!.name);
      const reservedNow = async () => (await fs.readdir(ipamDir)).filter((f) => /^\d/u.test(f)).sort();
      expect(await reservedNow()).toEqual([peers[3]!.ip, eth3.addresses[0]!.split('/')[0]!].sort());

      await own.removeNetwork('eth3');
      expect((await own.networks()).map((n) => n.name)).toEqual(['eth0']);
      expect((await (await own.agent()).listInterfaces()).interfaces.map((i) => i.name)).not.toContain('eth3');
      const links = (await ipj<any[]>(['link', 'show'], ownNs)).map((l) => l.ifname);
      expect(links).not.toContain('eth3');
      expect(links).not.toContain('vmtap1');
      expect(await reservedNow()).toEqual([peers[3]!.ip]);
    } finally {
      await own.delete({ force: true });
    }
    expect(own.state).toBe('deleted');
  });

  it('sets the network up again at start when its namespace was deleted behind its back', async () => {
    await sandbox.stop();
    await sh('ip', ['netns', 'del', ns]);
    await sandbox.start();
    const found = await sandbox.networks();
    expect(found.map((n) => [n.name, n.model, n.plugged])).toEqual([
      ['eth0', 'macvtap', true],
      ['eth1', 'bridge', true],
      ['eth2', 'none', true],
    ]);
    for (const i of [0, 1]) {
      const r = await runIn(sandbox, ['wget', '-q', '-O', '-', `http://${peers[i]!.ip}:8080/who.txt`]);
      expect(r.stdout, r.stderr).toBe(`peer ${i}\n`);
    }
  });
});
