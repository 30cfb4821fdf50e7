/**
 * The network commands of the CLI, as a script would use them: `vmpod run --network FILE`
 * (twice: two interfaces), `vmpod network ls`, `network add ID FILE`, `network rm`, errors.
 * A test that needs a detached sandbox runs and deletes its own.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { World, skipReason, type BridgeNet, type Peer } from './fixture.js';
import { vmpod } from '../sandbox/fixture.js';

describe.skipIf(skipReason)(`vmpod network commands${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  const world = new World();
  const files: string[] = [];
  const nets: BridgeNet[] = [];
  const peers: Peer[] = [];
  const ids = { edit: `clinet-${world.tag}`, errors: `clierr-${world.tag}` };

  /** Deletes a test's sandbox with -f, and checks that it went. */
  async function deleteForced(id: string): Promise<void> {
    const deleted = await vmpod(world.stateDir, ['delete', '-f', id]);
    expect(deleted.code, deleted.stderr).toBe(0);
    expect(deleted.stderr).toBe('');
    const left = JSON.parse((await vmpod(world.stateDir, ['ps', '--json'])).stdout) as { id: string }[];
    expect(left.map((s) => s.id)).not.toContain(id);
  }

  beforeAll(async () => {
    await world.init();
    for (let i = 0; i < 3; i++) {
      nets.push(world.bridgeNet());
      peers.push(await world.peer(nets[i]!, `p${i}`));
      files.push(path.join(world.dir, `${i}-net.conflist`));
      await fs.writeFile(files[i]!, JSON.stringify(nets[i]!.config));
    }
  });

  afterAll(async () => {
    try {
      // The tests delete their sandboxes themselves (and check it); this only catches what a
      // failed test left, which the check below then reports.
      const left = JSON.parse((await vmpod(world.stateDir, ['ps', '--json'])).stdout || '[]') as { id: string }[];
      for (const { id } of left) await vmpod(world.stateDir, ['delete', '-f', id]);
      expect(left).toEqual([]);
      await world.expectNothingLeft(Object.values(ids));
    } finally {
      await world.cleanup();
    }
  });

  it('runs a container on two CNI networks given with --network (microvm: virtio-mmio NICs), and reaches a peer on each', async () => {
    const r = await vmpod(world.stateDir, ['run', '--rm', '--machine', 'microvm', '--network', files[0]!, '--network', files[1]!, '--', 'sh', '-c', `ping -c 1 -W 5 ${peers[0]!.ip} && ping -c 1 -W 5 ${peers[1]!.ip} && ip -o link | grep -c eth`]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.trim().split('\n').pop()).toBe('2');
  });

  it('lists, adds and removes interfaces of a running sandbox', async () => {
    const id = ids.edit;
    const started = await vmpod(world.stateDir, ['run', '-d', '--name', id, '--network', files[0]!, '--', 'sleep', '600']);
    expect(started.code, started.stderr).toBe(0);
    const ls = await vmpod(world.stateDir, ['network', 'ls', id]);
    expect(ls.code, ls.stderr).toBe(0);
    expect(ls.stdout).toMatch(new RegExp(`^NAME +KIND +MODEL +ORIGIN[^\\n]*\\neth0 +veth +tcfilter +cni:${nets[0]!.name} `, 'u'));

    const added = await vmpod(world.stateDir, ['network', 'add', id, files[2]!, '--ifname', 'net2', '--json']);
    expect(added.code, added.stderr).toBe(0);
    expect(JSON.parse(added.stdout)).toMatchObject({ name: 'net2', origin: 'cni', network: nets[2]!.name, plugged: true });
    const listed = JSON.parse((await vmpod(world.stateDir, ['network', 'ls', id, '--json'])).stdout) as { name: string }[];
    expect(listed.map((n) => n.name)).toEqual(['eth0', 'net2']);

    const removed = await vmpod(world.stateDir, ['network', 'rm', id, nets[2]!.name]);
    expect(removed.code, removed.stderr).toBe(0);
    expect((JSON.parse((await vmpod(world.stateDir, ['network', 'ls', id, '--json'])).stdout) as { name: string }[]).map((n) => n.name)).toEqual(['eth0']);

    const rescan = await vmpod(world.stateDir, ['network', 'rescan', id, '--json']);
    expect(JSON.parse(rescan.stdout)).toEqual({ added: [], removed: [], updated: [] });
    await deleteForced(id);
  });

  it('explains usage mistakes and unknown interfaces', async () => {
    const id = ids.errors;
    const started = await vmpod(world.stateDir, ['run', '-d', '--name', id, '--network', files[1]!, '--', 'sleep', '600']);
    expect(started.code, started.stderr).toBe(0);
    const both = await vmpod(world.stateDir, ['network', 'add', id, files[2]!, '--interface', 'eth5']);
    expect(both.code).toBe(2);
    expect(both.stderr).toContain('give either a CONFLIST file or --interface NAME');
    const model = await vmpod(world.stateDir, ['network', 'add', id, files[2]!, '--model', 'ipvlan']);
    expect(model.code).toBe(2);
    const gone = await vmpod(world.stateDir, ['network', 'rm', id, 'nothere0']);
    expect(gone.code).toBe(125);
    expect(gone.stderr).toContain('sandbox interface "nothere0" does not exist');
    await deleteForced(id);
  });
});
