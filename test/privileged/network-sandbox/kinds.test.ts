/**
 * The endpoint kinds, found by a CNM-style scan of a namespace the user made and the sandbox
 * adopts: a veth, a macvlan (on a veth in the namespace), a multi-queue tap (its addresses are
 * the host side's; the guest's come from the config) and a macvtap. Traffic through each; then
 * the sandbox is deleted and the namespace is as the user made it (vmpod's changes undone, the
 * user's links kept, the tap down again).
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { World, ipj, runIn, sh, skipReason } from './fixture.js';

describe.skipIf(skipReason)(`endpoint kinds in an adopted namespace${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  const world = new World();
  let sandbox: Sandbox;
  let alive = false;
  /** Every sandbox made, for the final check. */
  const made: string[] = [];
  let ns: string;
  let base: string;
  const far: string[] = [];
  let linksBefore: any[];
  let farMac: string;

  beforeAll(async () => {
    await world.init();
    ns = await world.netns('box');
    base = `10.${200 + (Number.parseInt(world.tag, 16) % 50)}`;
    for (let i = 0; i < 3; i++) far.push(await world.netns(`far${i}`));
    const ip = (netns: string, ...args: string[]) => sh('ip', ['-n', netns, ...args]);
    // veth: v0 here, its peer in far0.
    await ip(ns, 'link', 'add', 'v0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', far[0]!);
    await ip(ns, 'addr', 'add', `${base}.0.2/24`, 'dev', 'v0');
    await ip(far[0]!, 'addr', 'add', `${base}.0.1/24`, 'dev', 'eth0');
    // macvlan mv0 on lower1, whose peer is in far1.
    await ip(ns, 'link', 'add', 'lower1', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', far[1]!);
    await ip(ns, 'link', 'add', 'mv0', 'link', 'lower1', 'type', 'macvlan', 'mode', 'bridge');
    await ip(ns, 'addr', 'add', `${base}.1.2/24`, 'dev', 'mv0');
    await ip(far[1]!, 'addr', 'add', `${base}.1.1/24`, 'dev', 'eth0');
    // a multi-queue tap, the host side of the guest's NIC: 10.x.2.1 here, 10.x.2.2 in the guest (config).
    await ip(ns, 'tuntap', 'add', 'dev', 'tap0', 'mode', 'tap', 'multi_queue');
    await ip(ns, 'addr', 'add', `${base}.2.1/24`, 'dev', 'tap0');
    // macvtap mvt0 on lower3, whose peer is in far2.
    await ip(ns, 'link', 'add', 'lower3', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', far[2]!);
    await ip(ns, 'link', 'add', 'mvt0', 'link', 'lower3', 'type', 'macvtap', 'mode', 'bridge');
    await ip(ns, 'addr', 'add', `${base}.3.2/24`, 'dev', 'mvt0');
    await ip(far[2]!, 'addr', 'add', `${base}.3.1/24`, 'dev', 'eth0');
    for (const dev of ['v0', 'lower1', 'mv0', 'lower3', 'mvt0']) await ip(ns, 'link', 'set', dev, 'up');
    // A neighbour someone pinned in the namespace: the guest gets it too.
    await ip(ns, 'neigh', 'add', `${base}.1.9`, 'lladdr', '02:00:00:00:01:09', 'dev', 'mv0', 'nud', 'permanent');
    for (const f of far) await ip(f, 'link', 'set', 'eth0', 'up');
    linksBefore = await ipj<any[]>(['link', 'show'], ns);
    farMac = (await ipj<any[]>(['link', 'show', 'dev', 'eth0'], far[0]!))[0].address;

  });

  /** The sandbox adopting the namespace; the delete test ends it and the next test makes another. */
  async function adopt(): Promise<void> {
    sandbox = await Sandbox.create({
      stateDir: world.stateDir,
      cpus: 2,
      network: { netns: ns, interfaces: { tap0: { addresses: [`${base}.2.2/24`] }, v0: { neighbors: [{ ip: `${base}.0.1`, mac: farMac }] } } },
    });
    made.push(sandbox.id);
    alive = true;
    await sandbox.start();
  }

  beforeEach(async () => {
    if (!alive) await adopt();
  });

  afterAll(async () => {
    try {
      if (alive) await sandbox.delete({ force: true });
      await world.expectNothingLeft(made);
    } finally {
      await world.cleanup();
    }
  });

  it('finds the veth, macvlan, tap and macvtap by a scan (not the macvlan/macvtap parents) and plugs each', async () => {
    const found = await sandbox.networks();
    expect(found.map((n) => [n.name, n.kind, n.model, n.origin, n.queues])).toEqual([
      ['v0', 'veth', 'tcfilter', 'scan', 2],
      ['mv0', 'macvlan', 'tcfilter', 'scan', 2],
      ['tap0', 'tap', 'direct', 'scan', 2],
      ['mvt0', 'macvtap', 'direct', 'scan', 2],
    ]);
    const links = Object.fromEntries(linksBefore.map((l) => [l.ifname, l]));
    const byName = Object.fromEntries(found.map((n) => [n.name, n]));
    for (const name of ['v0', 'mv0', 'mvt0']) expect(byName[name]!.mac).toBe(links[name].address);
    expect(byName['tap0']!.addresses).toEqual([`${base}.2.2/24`]); // from the config, not the tap's own
    expect(byName['mvt0']!.addresses).toEqual([`${base}.3.2/24`]);
    const guest = (await (await sandbox.agent()).listInterfaces()).interfaces;
    expect(guest.map((i) => i.name)).toEqual(expect.arrayContaining(['v0', 'mv0', 'tap0', 'mvt0']));
    // A static neighbour from the config, next to the mirrored address.
    expect(guest.find((i) => i.name === 'v0')).toMatchObject({ addresses: expect.arrayContaining([`${base}.0.2/24`]), neighbors: [{ ip: `${base}.0.1`, mac: farMac }] });
    expect((await runIn(sandbox, ['ip', 'neigh', 'show', 'dev', 'v0'])).stdout).toMatch(new RegExp(`^${base.replaceAll('.', '\\.')}\\.0\\.1 lladdr ${farMac} .*PERMANENT$`, 'mu'));
    // A permanent neighbour of the namespace, mirrored.
    expect(guest.find((i) => i.name === 'mv0')?.neighbors).toEqual([{ ip: `${base}.1.9`, mac: '02:00:00:00:01:09' }]);
    expect((await runIn(sandbox, ['ip', 'neigh', 'show', 'dev', 'mv0'])).stdout).toMatch(new RegExp(`^${base.replaceAll('.', '\\.')}\\.1\\.9 lladdr 02:00:00:00:01:09 .*PERMANENT$`, 'mu'));
  });

  it('passes traffic through each kind', async () => {
    const targets = [`${base}.0.1`, `${base}.1.1`, `${base}.2.1`, `${base}.3.1`];
    const r = await runIn(sandbox, ['sh', '-c', targets.map((t) => `ping -c 2 -W 5 ${t} || exit 1`).join('; ')]);
    expect(r.exitCode, r.stdout + r.stderr).toBe(0);
    expect(r.stdout.match(/2 packets received/gu)).toHaveLength(4);
  });

  it('leaves the adopted namespace as the user made it when the sandbox is deleted', async () => {
    alive = false;
    await sandbox.delete({ force: true });
    const links = await ipj<any[]>(['link', 'show'], ns);
    expect(links.map((l) => [l.ifname, l.address, l.flags.includes('UP')])).toEqual(linksBefore.map((l) => [l.ifname, l.address, l.flags.includes('UP')]));
    const qdiscs = JSON.parse((await sh('tc', ['-n', ns, '-j', 'qdisc', 'show'])) || '[]') as any[];
    expect(qdiscs.filter((q) => q.kind === 'ingress')).toEqual([]);
    expect((await ipj<any[]>(['addr', 'show', 'dev', 'tap0'], ns))[0].addr_info.map((a: any) => a.local)).toContain(`${base}.2.1`);
  });
});
