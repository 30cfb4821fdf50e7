/**
 * Unit tests of the endpoint and model logic (no kernel objects): which interfaces of a scan
 * become endpoints, which kind and model each gets, what its record says vmpod will make, what
 * the guest is given (mirrored addresses and routes), DNS merging, NIC queues.
 */
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, NotFoundError } from '../../src/errors.js';
import { createEndpoint, isPluggable, MacvlanEndpoint, MacvtapEndpoint, TapEndpoint, VethEndpoint } from '../../src/network/endpoints/index.js';
import { guestInterface, mergeDns, mirroredAddresses, mirroredNeighbors, mirroredRoutes, parseResolvConf } from '../../src/network/guest-config.js';
import type { Address } from '../../src/network/address.js';
import type { Route } from '../../src/network/route.js';
import type { Interface } from '../../src/network/scan.js';
import { resolveNetworkConfig } from '../../src/network/sandbox-config.js';
import { nicQueues, planEndpoints } from '../../src/sandbox/resources/network.js';

const GROUP = 0x766d;

function addr(dev: string, index: number, cidr: string, scope: Address['scope'] = 'global'): Address {
  const [address, prefix] = cidr.split('/') as [string, string];
  return { dev, index, family: address.includes(':') ? 6 : 4, address, prefixLength: Number(prefix), cidr, scope, flags: [] };
}

function route(dst: string, extra: Partial<Route> = {}): Route {
  return { family: dst.includes(':') ? 6 : 4, dst, table: 254, scope: 'global', protocol: 'boot', type: 'unicast', onlink: false, ...extra };
}

function iface(name: string, index: number, kind: Interface['kind'], extra: Partial<Interface> = {}): Interface {
  return { name, index, kind, mac: `02:00:00:00:00:${index.toString(16).padStart(2, '0')}`, mtu: 1500, up: true, group: 0, addresses: [], routes: [], neighbors: [], ...extra };
}

const scan: Interface[] = [
  iface('lo', 1, 'loopback'),
  iface('eth0', 2, 'veth', { linkNetnsId: 0 }),
  iface('mgmt0', 3, 'veth', { linkNetnsId: 1 }),
  iface('lower1', 4, 'veth', { linkNetnsId: 2 }),
  iface('mv0', 5, 'macvlan', { linkIndex: 4 }),
  iface('tap0', 6, 'tap'),
  iface('vmtap0', 7, 'tap', { group: GROUP }),
  iface('br0', 8, 'bridge'),
  iface('port0', 9, 'veth', { master: 'br0', linkNetnsId: 3 }),
  iface('mvt9', 10, 'macvtap', { linkIndex: 4 }),
  iface('cni1', 11, 'macvlan', { linkIndex: 2, linkNetnsId: 0 }),
];

describe('planEndpoints', () => {
  const attachments = [{ network: 'netA', ifName: 'cni1', config: {}, added: true }];

  it('takes CNI interfaces first, then what the scan finds by ifindex, skipping what is not an endpoint', () => {
    const config = resolveNetworkConfig({ cni: [{ config: { cniVersion: '1.0.0', name: 'netA', plugins: [{ type: 'macvlan' }] }, ifName: 'cni1' }] });
    const plan = planEndpoints(config, attachments, scan, { linkGroup: GROUP, plugged: [] });
    // Not: lo (loopback), lower1 (parent of mv0 and mvt9), vmtap0 (vmpod's group), br0 (a bridge), port0 (enslaved).
    expect(plan.map((p) => [p.name, p.origin.type, p.model])).toEqual([
      ['cni1', 'cni', 'tcfilter'],
      ['eth0', 'scan', 'tcfilter'],
      ['mgmt0', 'scan', 'tcfilter'],
      ['mv0', 'scan', 'tcfilter'],
      ['tap0', 'scan', undefined],
      ['mvt9', 'scan', undefined],
    ]);
  });

  it('honours the scan filters, the per-interface and per-network models, and what is plugged already', () => {
    const config = resolveNetworkConfig({
      model: 'bridge',
      scan: { exclude: ['mgmt0'] },
      interfaces: { tap0: { addresses: ['10.0.0.2/24'] }, eth0: { model: 'macvtap' } },
      cni: [{ config: { cniVersion: '1.0.0', name: 'netA', plugins: [{ type: 'macvlan' }] }, ifName: 'cni1', model: 'none' }],
    });
    const plan = planEndpoints(config, attachments, scan, { linkGroup: GROUP, plugged: ['mvt9'] });
    expect(plan.map((p) => [p.name, p.model])).toEqual([
      ['cni1', 'none'],
      ['eth0', 'macvtap'],
      ['mv0', 'bridge'],
      ['tap0', undefined],
    ]);
    expect(plan.find((p) => p.name === 'tap0')?.settings).toEqual({ addresses: ['10.0.0.2/24'] });
    // An include list names exactly what is plugged, parents and bridge ports included.
    const only = planEndpoints(resolveNetworkConfig({ scan: { include: ['port0', 'lower1'] } }), [], scan, { linkGroup: GROUP, plugged: [] });
    expect(only.map((p) => p.name)).toEqual(['lower1', 'port0']);
    expect(planEndpoints(resolveNetworkConfig({ scan: false }), [], scan, { linkGroup: GROUP, plugged: [] })).toEqual([]);
  });

  it('fails when a CNI network reports an interface the namespace does not have', () => {
    expect(() => planEndpoints(resolveNetworkConfig({}), [{ network: 'x', ifName: 'gone0', config: {}, added: true }], scan, { linkGroup: GROUP, plugged: [] })).toThrow(NotFoundError);
  });
});

describe('endpoint kinds', () => {
  const options = { index: 3, origin: { type: 'scan' } as const, queues: 2 };

  it('picks the class by kind, and refuses interfaces it cannot plug', () => {
    expect(createEndpoint(iface('a', 2, 'veth'), options)).toBeInstanceOf(VethEndpoint);
    expect(createEndpoint(iface('a', 2, 'macvlan'), options)).toBeInstanceOf(MacvlanEndpoint);
    expect(createEndpoint(iface('a', 2, 'tap'), options)).toBeInstanceOf(TapEndpoint);
    expect(createEndpoint(iface('a', 2, 'macvtap'), options)).toBeInstanceOf(MacvtapEndpoint);
    for (const kind of ['bridge', 'loopback', 'tun', 'device', 'ipvlan']) {
      expect(isPluggable({ kind })).toBe(false);
      expect(() => createEndpoint(iface('x', 2, kind), options)).toThrow(InvalidArgumentError);
    }
  });

  it('accepts only the models a kind can take', () => {
    for (const model of ['tcfilter', 'macvtap', 'bridge', 'none'] as const) expect(() => createEndpoint(iface('v', 2, 'veth'), { ...options, model })).not.toThrow();
    expect(() => createEndpoint(iface('m', 2, 'macvlan'), { ...options, model: 'bridge' })).toThrow(/takes the tcfilter or none model/u);
    expect(() => createEndpoint(iface('m', 2, 'macvlan'), { ...options, model: 'macvtap' })).toThrow(InvalidArgumentError);
    expect(() => createEndpoint(iface('t', 2, 'tap'), { ...options, model: 'tcfilter' })).toThrow(/takes no inter-network model/u);
    expect(() => createEndpoint(iface('t', 2, 'macvtap'), { ...options, model: 'none' })).toThrow(/takes no inter-network model/u);
  });

  it('records what each model gives the hypervisor, the NIC id, MAC and MTU', () => {
    const veth = iface('eth0', 2, 'veth', { mtu: 1400, addresses: [addr('eth0', 2, '10.1.0.5/24')] });
    const rec = (model: 'tcfilter' | 'macvtap' | 'bridge' | 'none') => createEndpoint(veth, { ...options, model }).save();
    expect(rec('tcfilter')).toMatchObject({ deviceId: 'vnic3', kind: 'veth', model: 'tcfilter', mac: veth.mac, mtu: 1400, backend: { type: 'tap', name: 'vmtap3', queues: 2, multiQueue: true }, changes: [], plugged: false });
    expect(rec('macvtap').backend).toEqual({ type: 'macvtap', name: 'vmmvt3', queues: 2, multiQueue: true });
    expect(rec('bridge').backend.name).toBe('vmtap3');
    expect(createEndpoint(veth, { ...options, queues: 1 }).save().backend).toEqual({ type: 'tap', name: 'vmtap3', queues: 1, multiQueue: false });
    expect(rec('tcfilter').guest).toEqual({ name: 'eth0', mac: veth.mac, mtu: 1400, addresses: ['10.1.0.5/24'], routes: [], neighbors: [] });
  });

  it('gives a tap\'s guest a MAC of its own and no mirrored addresses; a macvtap\'s guest keeps its MAC and addresses', () => {
    const tap = iface('tap0', 6, 'tap', { addresses: [addr('tap0', 6, '10.2.0.1/24')] });
    const t = createEndpoint(tap, options).save();
    expect(t.model).toBe('direct');
    expect(t.mac).not.toBe(tap.mac);
    expect(parseInt(t.mac.slice(0, 2), 16) & 0x03).toBe(0x02); // locally administered unicast
    expect(t.guest.addresses).toEqual([]);
    expect(createEndpoint(tap, { ...options, overrides: { addresses: ['10.2.0.2/24'] } }).save().guest.addresses).toEqual(['10.2.0.2/24']);
    const mvt = iface('mvt0', 7, 'macvtap', { addresses: [addr('mvt0', 7, '10.3.0.2/24')] });
    const m = createEndpoint(mvt, options).save();
    expect([m.mac, m.guest.addresses, m.backend]).toEqual([mvt.mac, ['10.3.0.2/24'], { type: 'macvtap', name: 'mvt0', queues: 2, multiQueue: true }]);
  });
});

describe('what the guest mirrors', () => {
  const eth0 = iface('eth0', 2, 'veth', {
    addresses: [addr('eth0', 2, '10.1.0.5/24'), addr('eth0', 2, 'fd00::5/64'), addr('eth0', 2, 'fe80::1/64', 'link'), addr('eth0', 2, '127.0.0.9/8', 'host')],
    routes: [
      route('10.1.0.0/24', { protocol: 'kernel', scope: 'link', dev: 'eth0' }),
      route('default', { gateway: '10.1.0.1', dev: 'eth0' }),
      route('10.9.0.0/16', { gateway: '10.1.0.1', metric: 100, dev: 'eth0', onlink: true }),
      route('192.0.2.0/24', { scope: 'link', dev: 'eth0' }),
      route('198.51.100.0/24', { scope: 'host', dev: 'eth0' }),
      route('10.8.0.0/16', { gateway: '10.1.0.1', table: 100, dev: 'eth0' }),
      route('default', { family: 6, gateway: 'fd00::1', metric: 1024, dev: 'eth0' }),
      route('fe80::/64', { family: 6, protocol: 'kernel', metric: 256, dev: 'eth0' }),
      route('203.0.113.0/24', { type: 'blackhole' }),
      route('10.7.0.0/16', { multipath: true }),
    ],
  });

  it('mirrors global addresses (not link-local or host ones)', () => {
    expect(mirroredAddresses(eth0)).toEqual(['10.1.0.5/24', 'fd00::5/64']);
  });

  it('mirrors routes someone installed, with what differs from the guest\'s defaults', () => {
    expect(mirroredRoutes(eth0)).toEqual([
      { dst: 'default', family: 4, gateway: '10.1.0.1' },
      { dst: '10.9.0.0/16', gateway: '10.1.0.1', metric: 100, onlink: true },
      { dst: '192.0.2.0/24' },
      { dst: '198.51.100.0/24', scope: 'host' },
      { dst: '10.8.0.0/16', gateway: '10.1.0.1', table: 100 },
      { dst: 'default', family: 6, gateway: 'fd00::1', metric: 1024 },
    ]);
  });

  it('mirrors permanent neighbours that have a MAC, and nothing the kernel learned', () => {
    const pinned = iface('eth0', 2, 'veth', {
      neighbors: [
        { family: 4, address: '10.1.0.1', mac: '02:00:00:00:00:fe', dev: 'eth0', states: ['permanent'] },
        { family: 6, address: 'fd00::1', mac: '02:00:00:00:00:fd', dev: 'eth0', states: ['permanent'] },
        { family: 4, address: '10.1.0.7', mac: '02:00:00:00:00:07', dev: 'eth0', states: ['reachable'] },
        { family: 4, address: '10.1.0.8', dev: 'eth0', states: ['permanent'] },
      ],
    });
    expect(mirroredNeighbors(pinned)).toEqual([
      { ip: '10.1.0.1', mac: '02:00:00:00:00:fe' },
      { ip: 'fd00::1', mac: '02:00:00:00:00:fd' },
    ]);
    expect(guestInterface(pinned, { mac: pinned.mac, mtu: 1500 }, { mirrorAddresses: true }).neighbors).toHaveLength(2);
    expect(guestInterface(pinned, { mac: pinned.mac, mtu: 1500 }, { mirrorAddresses: false }).neighbors).toEqual([]);
  });

  it('lets overrides replace any part', () => {
    const g = guestInterface(eth0, { mac: '02:aa:00:00:00:01', mtu: 9000 }, { mirrorAddresses: true, overrides: { routes: [], neighbors: [{ ip: '10.1.0.1', mac: '02:00:00:00:00:fe' }] } });
    expect(g).toEqual({ name: 'eth0', mac: '02:aa:00:00:00:01', mtu: 9000, addresses: ['10.1.0.5/24', 'fd00::5/64'], routes: [], neighbors: [{ ip: '10.1.0.1', mac: '02:00:00:00:00:fe' }] });
  });
});

describe('DNS', () => {
  const host = '# generated\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch corp.example lab.example\noptions edns0 trust-ad\n';

  it('parses the parts of a resolv.conf that matter', () => {
    expect(parseResolvConf(host)).toEqual({ nameservers: ['127.0.0.53', '10.0.0.2'], search: ['corp.example', 'lab.example'], options: ['edns0', 'trust-ad'] });
    expect(parseResolvConf('domain x.example\nnameserver not-an-ip\nnameserver fd00::53 # comment\n')).toEqual({ nameservers: ['fd00::53'], search: [], options: [], domain: 'x.example' });
  });

  it('merges the config then the CNI results, without duplicates, ignoring the host', () => {
    expect(mergeDns([{ nameservers: ['10.0.0.53'], search: ['a'] }, { nameservers: ['10.0.0.53', '10.0.1.53'], search: ['b'], options: ['ndots:5'], domain: 'd' }, undefined], host)).toEqual({
      nameservers: ['10.0.0.53', '10.0.1.53'],
      search: ['a', 'b'],
      options: ['ndots:5'],
      domain: 'd',
    });
  });

  it('falls back to the host\'s resolv.conf, without loopback nameservers, when nothing names one', () => {
    expect(mergeDns([{ search: ['mine'] }], host)).toEqual({ nameservers: ['10.0.0.2'], search: ['mine'], options: ['edns0', 'trust-ad'] });
    expect(mergeDns([], undefined)).toEqual({ nameservers: [], search: [], options: [] });
  });
});

describe('nicQueues', () => {
  it('gives one queue per vCPU, up to 8', () => {
    expect([1, 2, 4, 8, 16, 64].map(nicQueues)).toEqual([1, 2, 4, 8, 8, 8]);
  });
});
