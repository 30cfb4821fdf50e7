/**
 * Unit tests of a sandbox's network config (SandboxConfig.network): defaults, CNI networks,
 * interface names, models, per-interface guest settings, DNS and hosts, and every rejection,
 * all before any side effect.
 */
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { CniConfig, CniConfigError } from '../../src/network/cni/index.js';
import { hasHostBits, resolveNetworkConfig } from '../../src/network/sandbox-config.js';
import { resolveSandboxConfig } from '../../src/sandbox/config.js';

const bridge = (name = 'net1', extra: Record<string, unknown> = {}) => ({
  cniVersion: '1.0.0',
  name,
  plugins: [{ type: 'bridge', bridge: 'cni0', ipam: { type: 'host-local', subnet: '10.1.0.0/24' } }],
  ...extra,
});

function rejects(config: unknown, field: string | RegExp): InvalidArgumentError {
  let error: unknown;
  try {
    resolveNetworkConfig(config as never);
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(InvalidArgumentError);
  const e = error as InvalidArgumentError;
  if (typeof field === 'string') expect(e.field).toBe(field);
  else expect(e.message).toMatch(field);
  return e;
}

describe('resolveNetworkConfig', () => {
  it('fills in the defaults: no CNI network, scan on, tcfilter, no DNS override', () => {
    expect(resolveNetworkConfig({})).toEqual({ cni: [], scan: { exclude: [] }, model: 'tcfilter', interfaces: {}, hosts: [], cniPluginDirs: [] });
  });

  it('names interfaces eth0, eth1, ... in order unless given, and keeps the configuration list', () => {
    const r = resolveNetworkConfig({ cni: [{ config: bridge('a') }, { config: CniConfig.fromObject(bridge('b')), ifName: 'net9', model: 'bridge' }, { config: bridge('c') }] });
    expect(r.cni.map((c) => [c.network?.['name'], c.ifName, c.model])).toEqual([
      ['a', 'eth0', undefined],
      ['b', 'net9', 'bridge'],
      ['c', 'eth2', undefined],
    ]);
    expect(r.cni[0]!.network).toEqual(CniConfig.fromObject(bridge('a')).toJSON());
  });

  it('keeps CNI_ARGS, capability args, plugin dirs, the cache dir and the timeout', () => {
    const r = resolveNetworkConfig({
      cni: [{ file: '/etc/cni/net.d/10-x.conflist', args: { IgnoreUnknown: '1' }, capabilityArgs: { bandwidth: { ingressRate: 1000 } } }],
      cniPluginDirs: ['/opt/my/cni'],
      cniCacheDir: '/var/lib/cni',
      cniTimeoutMs: 5000,
    });
    expect(r.cni[0]).toEqual({ ifName: 'eth0', file: '/etc/cni/net.d/10-x.conflist', args: [['IgnoreUnknown', '1']], capabilityArgs: { bandwidth: { ingressRate: 1000 } } });
    expect(r).toMatchObject({ cniPluginDirs: ['/opt/my/cni'], cniCacheDir: '/var/lib/cni', cniTimeoutMs: 5000 });
  });

  it('adopts a namespace by name or path', () => {
    expect(resolveNetworkConfig({ netns: 'box1' }).netns).toBe('box1');
    expect(resolveNetworkConfig({ netns: '/proc/1234/ns/net' }).netns).toBe('/proc/1234/ns/net');
    rejects({ netns: '../etc' }, 'network.netns');
  });

  it('takes scan filters and per-interface settings', () => {
    const r = resolveNetworkConfig({
      scan: { include: ['eth1'], exclude: ['mgmt0'] },
      interfaces: {
        tap0: { addresses: ['10.2.0.2/24', 'fd00::2/64'], routes: [{ dst: 'default', gateway: '10.2.0.1' }, { dst: '10.9.0.0/16', gateway: '10.2.0.1', metric: 5, onlink: true }], neighbors: [{ ip: '10.2.0.1', mac: '02:00:00:00:00:01' }] },
        eth1: { model: 'macvtap' },
      },
    });
    expect(r.scan).toEqual({ exclude: ['mgmt0'], include: ['eth1'] });
    expect(r.interfaces['tap0']).toEqual({
      addresses: ['10.2.0.2/24', 'fd00::2/64'],
      routes: [{ dst: 'default', gateway: '10.2.0.1' }, { dst: '10.9.0.0/16', gateway: '10.2.0.1', metric: 5, onlink: true }],
      neighbors: [{ ip: '10.2.0.1', mac: '02:00:00:00:00:01' }],
    });
    expect(r.interfaces['eth1']).toEqual({ model: 'macvtap' });
    expect(resolveNetworkConfig({ scan: false }).scan).toBe(false);
  });

  it('takes DNS, hosts and the hostname', () => {
    const r = resolveNetworkConfig({ hostname: 'web-1', dns: { nameservers: ['10.0.0.53'], search: ['svc.local'], options: ['ndots:5'], domain: 'local' }, hosts: [{ ip: '10.0.0.9', names: ['db', 'db.local'] }] });
    expect(r.dns).toEqual({ nameservers: ['10.0.0.53'], search: ['svc.local'], options: ['ndots:5'], domain: 'local' });
    expect(r.hosts).toEqual([{ ip: '10.0.0.9', names: ['db', 'db.local'] }]);
    expect(r.hostname).toBe('web-1');
  });

  it('rejects bad CNI configurations with the CNI library\'s typed errors', () => {
    expect(() => resolveNetworkConfig({ cni: [{ config: { ...bridge(), cniVersion: '0.2.0' } }] })).toThrow(CniConfigError);
    expect(() => resolveNetworkConfig({ cni: [{ config: { ...bridge(), cniVersion: '9.9.9' } }] })).toThrow(/not supported/u);
    expect(() => resolveNetworkConfig({ cni: [{ config: { cniVersion: '1.0.0', name: 'x', plugins: [{ type: '../../bin/sh' }] } }] })).toThrow(CniConfigError);
    expect(() => resolveNetworkConfig({ cni: [{ config: { cniVersion: '1.0.0', name: 'x', plugins: [] } }] })).toThrow(CniConfigError);
  });

  it('rejects two networks for one interface name, naming both', () => {
    const e = rejects({ cni: [{ config: bridge('a'), ifName: 'eth0' }, { config: bridge('b') }, { config: bridge('c'), ifName: 'eth0' }] }, /used by both network "a" and network "c"/u);
    expect(e.field).toBe('attachments[2].ifName');
  });

  it('rejects everything else that is malformed, naming the field', () => {
    rejects({ surprise: 1 }, 'network.surprise');
    rejects({ cni: {} }, 'network.cni');
    rejects({ cni: [{}] }, 'network.cni[0]');
    rejects({ cni: [{ file: '/a.conflist', config: bridge() }] }, 'network.cni[0]');
    rejects({ cni: [{ file: 'relative.conflist' }] }, 'network.cni[0].file');
    rejects({ cni: [{ config: bridge(), ifName: 'a-name-longer-than-15' }] }, 'network.cni[0].ifName');
    rejects({ cni: [{ config: bridge(), args: { 'bad key': 'x' } }] }, /network\.cni\[0\]\.args/u);
    rejects({ cni: [{ config: bridge(), args: { K: 'a;b' } }] }, /network\.cni\[0\]\.args\.K/u);
    rejects({ model: 'ipvlan' }, 'network.model');
    rejects({ cni: [{ config: bridge(), model: 'vlan' }] }, 'network.cni[0].model');
    rejects({ scan: { exclude: ['bad/name'] } }, 'network.scan.exclude[0]');
    rejects({ interfaces: { eth0: { addresses: ['10.0.0.1'] } } }, 'network.interfaces.eth0.addresses[0]');
    rejects({ interfaces: { eth0: { routes: [{ dst: '10.0.0.1/24' }] } } }, 'network.interfaces.eth0.routes[0].dst');
    rejects({ interfaces: { eth0: { routes: [{ dst: 'default', gateway: 'fd00::1', family: 4 }] } } }, 'network.interfaces.eth0.routes[0].family');
    rejects({ interfaces: { eth0: { routes: [{ dst: '10.0.0.0/8', gateway: 'fd00::1' }] } } }, 'network.interfaces.eth0.routes[0].gateway');
    rejects({ interfaces: { eth0: { routes: [{ dst: '10.0.0.0/8', table: 255 }] } } }, 'network.interfaces.eth0.routes[0].table');
    rejects({ interfaces: { eth0: { neighbors: [{ ip: '10.0.0.1', mac: '01:00:5e:00:00:01' }] } } }, 'network.interfaces.eth0.neighbors[0].mac');
    rejects({ interfaces: { 'bad name': {} } }, 'network.interfaces');
    rejects({ hostname: 'has space' }, 'network.hostname');
    rejects({ dns: { nameservers: ['dns.example'] } }, 'network.dns.nameservers[0]');
    rejects({ dns: { search: ['a;b'] } }, 'network.dns.search[0]');
    rejects({ hosts: [{ ip: '10.0.0.1', names: [] }] }, 'network.hosts[0].names');
    rejects({ cniTimeoutMs: 0 }, 'network.cniTimeoutMs');
    rejects({ cniPluginDirs: ['relative'] }, 'network.cniPluginDirs[0]');
  });

  it('is checked as part of the sandbox config', () => {
    expect(resolveSandboxConfig({ network: {} }).network?.model).toBe('tcfilter');
    expect(resolveSandboxConfig({}).network).toBeUndefined();
    expect(() => resolveSandboxConfig({ network: { model: 'x' as never } })).toThrow(InvalidArgumentError);
  });
});

describe('hasHostBits', () => {
  it('tells network addresses from host addresses, IPv4 and IPv6', () => {
    expect(hasHostBits('10.1.0.0', 16, 4)).toBe(false);
    expect(hasHostBits('10.1.0.1', 16, 4)).toBe(true);
    expect(hasHostBits('0.0.0.0', 0, 4)).toBe(false);
    expect(hasHostBits('10.1.2.3', 32, 4)).toBe(false);
    expect(hasHostBits('fd00:1::', 32, 6)).toBe(false);
    expect(hasHostBits('fd00:1::1', 64, 6)).toBe(true);
    expect(hasHostBits('::ffff:10.0.0.0', 120, 6)).toBe(false);
    expect(hasHostBits('::ffff:10.0.0.1', 120, 6)).toBe(true);
  });
});
