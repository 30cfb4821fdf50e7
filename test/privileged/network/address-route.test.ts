// Addresses and routes for real, inside a test namespace, checked against `ip -j address/route`.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AlreadyExistsError, InvalidArgumentError, NotFoundError } from '../../../src/errors.js';
import {
  addAddress,
  addRoute,
  addVeth,
  createNetns,
  deleteAddress,
  deleteRoute,
  listAddresses,
  listRoutes,
  type Netns,
} from '../../../src/network/index.js';
import { ipJson, KernelObjects, skipReason, uniquePrefix } from '../helpers/net.js';

interface IpAddr {
  ifname: string;
  addr_info: Array<{ family: string; local: string; prefixlen: number; scope: string; broadcast?: string; label?: string }>;
}
interface IpRoute {
  dst: string;
  gateway?: string;
  dev?: string;
  metric?: number;
  table?: string;
  protocol?: string;
  scope?: string;
  prefsrc?: string;
}

describe.skipIf(skipReason !== undefined)(`addresses and routes${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let k: KernelObjects;
  let nsName: string;
  let ns: Netns;
  beforeEach(async () => {
    k = new KernelObjects(uniquePrefix());
    nsName = k.netns('a');
    ns = await createNetns(nsName);
    // A veth pair with both ends in the test namespace: no traffic leaves it.
    await addVeth({ name: 'eth0', netns: ns, up: true, peer: { name: 'eth1', up: true } });
  });
  afterEach(async () => {
    ns.close();
    await k.cleanup();
    await k.assertNothingLeft();
  });

  it('adds, lists and deletes IPv4 and IPv6 addresses', async () => {
    await addAddress('eth0', '10.200.0.2/24', { netns: ns, broadcast: '10.200.0.255', label: 'eth0:x' });
    await addAddress('eth0', 'fd00:200::2/64', { netns: ns, noDad: true });
    await addAddress('lo', '127.0.0.5/8', { netns: nsName });

    const [ip] = await ipJson<IpAddr[]>(['address', 'show', 'dev', 'eth0'], nsName);
    const v4 = ip?.addr_info.find((a) => a.family === 'inet');
    expect(v4).toMatchObject({ local: '10.200.0.2', prefixlen: 24, broadcast: '10.200.0.255', label: 'eth0:x', scope: 'global' });
    expect(ip?.addr_info.some((a) => a.family === 'inet6' && a.local === 'fd00:200::2' && a.prefixlen === 64)).toBe(true);
    const [lo] = await ipJson<IpAddr[]>(['address', 'show', 'dev', 'lo'], nsName);
    expect(lo?.addr_info.find((a) => a.local === '127.0.0.5')?.scope).toBe('host'); // as `ip` defaults it

    const mine = await listAddresses({ netns: ns, dev: 'eth0' });
    expect(mine.find((a) => a.family === 4)).toMatchObject({ dev: 'eth0', cidr: '10.200.0.2/24', scope: 'global', broadcast: '10.200.0.255', label: 'eth0:x' });
    const six = mine.find((a) => a.address === 'fd00:200::2');
    expect(six).toMatchObject({ family: 6, prefixLength: 64 });
    expect(six?.flags).toEqual(expect.arrayContaining(['nodad', 'permanent']));
    expect((await listAddresses({ netns: ns, family: 4 })).map((a) => a.cidr).sort()).toEqual(['10.200.0.2/24', '127.0.0.5/8']);

    await expect(addAddress('eth0', '10.200.0.2/24', { netns: ns })).rejects.toBeInstanceOf(AlreadyExistsError);
    await addAddress('eth0', '10.200.0.2/24', { netns: ns, replace: true });

    await deleteAddress('eth0', '10.200.0.2/24', { netns: ns });
    await deleteAddress('eth0', 'fd00:200::2/64', { netns: ns });
    const after = await ipJson<IpAddr[]>(['address', 'show', 'dev', 'eth0'], nsName);
    expect(after[0]?.addr_info.filter((a) => a.local === '10.200.0.2' || a.local === 'fd00:200::2')).toEqual([]);
    await expect(deleteAddress('eth0', '10.200.0.2/24', { netns: ns })).rejects.toMatchObject({ constructor: NotFoundError, kind: 'address' });
    await expect(addAddress('nope0', '10.200.0.3/24', { netns: ns })).rejects.toMatchObject({ constructor: NotFoundError, kind: 'link', id: 'nope0' });
  });

  it('adds, lists and deletes routes (default via, device routes, metric, table)', async () => {
    await addAddress('eth0', '10.201.0.2/24', { netns: ns });
    await addRoute({ netns: ns, dst: 'default', via: '10.201.0.1' });
    await addRoute({ netns: ns, dst: '10.202.0.0/16', dev: 'eth0', metric: 50, src: '10.201.0.2' });
    await addRoute({ netns: ns, dst: '10.203.0.0/16', via: '10.201.0.1', table: 1000 });
    await addAddress('eth0', 'fd00:201::2/64', { netns: ns, noDad: true });
    await addRoute({ netns: ns, dst: 'fd00:202::/48', via: 'fd00:201::1' });

    const ipMain = await ipJson<IpRoute[]>(['route', 'show'], nsName);
    expect(ipMain.find((r) => r.dst === 'default')).toMatchObject({ gateway: '10.201.0.1', dev: 'eth0', protocol: 'boot' });
    expect(ipMain.find((r) => r.dst === '10.202.0.0/16')).toMatchObject({ dev: 'eth0', metric: 50, scope: 'link', prefsrc: '10.201.0.2' });
    const ipTable = await ipJson<IpRoute[]>(['route', 'show', 'table', '1000'], nsName);
    expect(ipTable).toEqual([expect.objectContaining({ dst: '10.203.0.0/16', gateway: '10.201.0.1' })]);

    const main = await listRoutes({ netns: ns });
    expect(main.find((r) => r.dst === 'default' && r.family === 4)).toMatchObject({ gateway: '10.201.0.1', dev: 'eth0', table: 254, protocol: 'boot', scope: 'global', type: 'unicast' });
    expect(main.find((r) => r.dst === '10.202.0.0/16')).toMatchObject({ dev: 'eth0', metric: 50, scope: 'link', src: '10.201.0.2' });
    expect(main.find((r) => r.dst === '10.201.0.0/24')).toMatchObject({ protocol: 'kernel', dev: 'eth0' }); // the prefix route
    expect(main.find((r) => r.dst === 'fd00:202::/48')).toMatchObject({ family: 6, gateway: 'fd00:201::1' });
    expect((await listRoutes({ netns: ns, table: 1000 })).map((r) => r.dst)).toEqual(['10.203.0.0/16']);
    expect((await listRoutes({ netns: ns, table: 'all' })).some((r) => r.table === 255 && r.type === 'local')).toBe(true);

    await expect(addRoute({ netns: ns, dst: 'default', via: '10.201.0.1' })).rejects.toBeInstanceOf(AlreadyExistsError);
    await addRoute({ netns: ns, dst: 'default', via: '10.201.0.3' }, { replace: true });
    expect((await listRoutes({ netns: ns })).find((r) => r.dst === 'default' && r.family === 4)?.gateway).toBe('10.201.0.3');

    await deleteRoute({ netns: ns, dst: 'default' });
    await deleteRoute({ netns: ns, dst: '10.202.0.0/16', dev: 'eth0' });
    await deleteRoute({ netns: ns, dst: '10.203.0.0/16', table: 1000 });
    const left = (await ipJson<IpRoute[]>(['route', 'show'], nsName)).map((r) => r.dst);
    expect(left).not.toContain('default');
    expect(left).not.toContain('10.202.0.0/16');
    await expect(deleteRoute({ netns: ns, dst: '10.202.0.0/16' })).rejects.toMatchObject({ constructor: NotFoundError, kind: 'route' });
  });

  it('rejects invalid addresses and routes before any call', async () => {
    await expect(addAddress('eth0', '10.0.0.300/24', { netns: ns })).rejects.toMatchObject({ field: 'address' });
    await expect(addAddress('eth0', '10.0.0.1', { netns: ns })).rejects.toMatchObject({ field: 'address' });
    await expect(addAddress('eth0', '10.0.0.1/33', { netns: ns })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(addAddress('eth0', '10.0.0.1/24', { netns: ns, peer: 'fd00::1' })).rejects.toMatchObject({ field: 'peer' });
    await expect(addRoute({ netns: ns, dst: '10.0.0.0/8', via: 'fd00::1' })).rejects.toMatchObject({ field: 'via' });
    await expect(addRoute({ netns: ns, dst: '10.0.0.0/8' })).rejects.toMatchObject({ field: 'dev' });
    await expect(addRoute({ netns: ns, dst: 'nowhere' })).rejects.toMatchObject({ field: 'dst' });
  });
});
