import { describe, expect, it } from 'vitest';
import { parseResult, ResultFormatError } from '../../src/network/cni/result.js';
import { compareVersions } from '../../src/network/cni/index.js';

function invalid(value: unknown, message: string, configVersion = '1.0.0'): void {
  expect(() => parseResult(value, configVersion)).toThrow(ResultFormatError);
  expect(() => parseResult(value, configVersion)).toThrow(message);
}

// The spec's own example result (section 5 / appendix), as bridge prints it.
const spec100 = {
  cniVersion: '1.0.0',
  interfaces: [
    { name: 'cni0', mac: '00:11:22:33:44:55' },
    { name: 'veth3243', mac: '55:44:33:22:11:11' },
    { name: 'eth0', mac: '99:88:77:66:55:44', sandbox: '/var/run/netns/blue' },
  ],
  ips: [{ address: '10.1.0.5/16', gateway: '10.1.0.1', interface: 2 }],
  routes: [{ dst: '0.0.0.0/0' }],
  dns: { nameservers: ['10.1.0.1'] },
  somethingNew: { kept: true },
};

describe('CNI results', () => {
  it('reads a 1.0.0 result into the typed model and keeps the raw one whole', () => {
    const { raw, result } = parseResult(spec100, '1.0.0');
    expect(raw).toEqual(spec100);
    expect(result).toEqual({
      cniVersion: '1.0.0',
      sourceVersion: '1.0.0',
      interfaces: spec100.interfaces,
      ips: spec100.ips,
      routes: spec100.routes,
      dns: { nameservers: ['10.1.0.1'] },
    });
    expect(Object.isFrozen(result.interfaces[0])).toBe(true);
  });

  it('reads 1.1.0 fields (mtu, socketPath, pciID, route attributes)', () => {
    const { result } = parseResult(
      {
        cniVersion: '1.1.0',
        interfaces: [{ name: 'net1', mtu: 9000, socketPath: '/run/vhu.sock', pciID: '0000:3b:00.1' }],
        ips: [{ address: 'fd00::5/64', gateway: 'fd00::1', interface: 0 }],
        routes: [{ dst: '10.0.0.0/8', gw: '10.0.0.1', mtu: 1400, advmss: 1360, priority: 10, table: 100, scope: 0 }],
      },
      '1.1.0',
    );
    expect(result.cniVersion).toBe('1.1.0');
    expect(result.interfaces[0]).toEqual({ name: 'net1', mtu: 9000, socketPath: '/run/vhu.sock', pciID: '0000:3b:00.1' });
    expect(result.routes[0]).toEqual({ dst: '10.0.0.0/8', gw: '10.0.0.1', mtu: 1400, advmss: 1360, priority: 10, table: 100, scope: 0 });
    expect(result.dns).toEqual({});
  });

  it('converts 0.4.0 and 0.3.1 results to the 1.x model', () => {
    const v040 = {
      cniVersion: '0.4.0',
      interfaces: [{ name: 'eth0', mac: '0a:58:0a:f4:00:05', sandbox: '/var/run/netns/x' }],
      ips: [
        { version: '4', address: '10.244.0.5/24', gateway: '10.244.0.1', interface: 0 },
        { version: '6', address: 'fd00::5/64', interface: 0 },
      ],
      routes: [{ dst: '0.0.0.0/0', gw: '10.244.0.1' }],
      dns: { nameservers: ['10.96.0.10'], domain: 'cluster.local', search: ['svc.cluster.local'], options: ['ndots:5'] },
    };
    const { raw, result } = parseResult(v040, '0.4.0');
    expect(raw).toEqual(v040);
    expect(result).toEqual({
      cniVersion: '1.0.0',
      sourceVersion: '0.4.0',
      interfaces: v040.interfaces,
      ips: [
        { address: '10.244.0.5/24', gateway: '10.244.0.1', interface: 0 },
        { address: 'fd00::5/64', interface: 0 },
      ],
      routes: v040.routes,
      dns: v040.dns,
    });
    expect(parseResult({ ...v040, cniVersion: '0.3.1' }, '0.3.1').result.sourceVersion).toBe('0.3.1');
    // 1.x-only fields are not read from older results.
    expect(parseResult({ cniVersion: '0.4.0', interfaces: [{ name: 'e', mtu: 1 }] }, '0.4.0').result.interfaces[0]).toEqual({ name: 'e' });
  });

  it('fills a missing cniVersion from the configuration, as libcni does', () => {
    const { raw, result } = parseResult({ ips: [{ version: '4', address: '10.0.0.2/24' }] }, '0.4.0');
    expect(raw['cniVersion']).toBe('0.4.0');
    expect(result.sourceVersion).toBe('0.4.0');
    expect(result.interfaces).toEqual([]);
  });

  it('rejects malformed results with the path of the problem', () => {
    invalid('x', 'result: must be a JSON object');
    invalid([], 'result: must be a JSON object');
    invalid({ cniVersion: '0.2.0' }, 'cniVersion: results of CNI 0.2.0 are not supported');
    invalid({ cniVersion: 'x' }, 'cniVersion: "x" is not a version');
    invalid({ cniVersion: '1.0.0', interfaces: {} }, 'interfaces: must be a list');
    invalid({ cniVersion: '1.0.0', interfaces: [{ mac: 'x' }] }, 'interfaces[0].name: is missing');
    invalid({ cniVersion: '1.0.0', interfaces: [{ name: 7 }] }, 'interfaces[0].name: must be a string, not 7');
    invalid({ cniVersion: '1.0.0', interfaces: [{ name: 'a', mtu: -1 }] }, 'interfaces[0].mtu: must be an unsigned integer, not -1');
    invalid({ cniVersion: '1.0.0', ips: [{ address: '10.0.0.1' }] }, 'ips[0].address: "10.0.0.1" is not an address in ADDRESS/PREFIX form');
    invalid({ cniVersion: '1.0.0', ips: [{ address: '10.0.0.1/24', interface: 0 }] }, 'ips[0].interface: index 0 is out of range (0 interfaces)');
    invalid({ cniVersion: '1.0.0', ips: [{ address: '10.0.0.1/24', gateway: 'fd00::1' }] }, "ips[0].gateway: fd00::1 is not of the address's family");
    invalid({ cniVersion: '1.0.0', ips: [{ address: '10.0.0.1/24', gateway: 'router' }] }, 'ips[0].gateway: "router" is not an IP address');
    invalid({ cniVersion: '0.4.0', ips: [{ address: '10.0.0.1/24' }] }, 'ips[0].version: must be "4" or "6", not undefined');
    invalid({ cniVersion: '0.4.0', ips: [{ version: '6', address: '10.0.0.1/24' }] }, 'ips[0].version: "6" does not match address 10.0.0.1/24');
    invalid({ cniVersion: '1.0.0', routes: [{ gw: '10.0.0.1' }] }, 'routes[0].dst: is missing');
    invalid({ cniVersion: '1.0.0', routes: [{ dst: 'default' }] }, 'routes[0].dst: "default" is not an address in ADDRESS/PREFIX form');
    invalid({ cniVersion: '1.0.0', dns: { nameservers: ['dns.example'] } }, 'dns.nameservers[0]: "dns.example" is not an IP address');
    invalid({ cniVersion: '1.0.0', dns: { search: 'a' } }, 'dns.search: must be a list of strings');
  });

  it('rejects entries of the wrong type at every level, and takes null and empty optional values as absent', () => {
    invalid({ cniVersion: '1.0.0', interfaces: [null] }, 'interfaces[0]: must be an object');
    invalid({ cniVersion: '1.0.0', interfaces: [['eth0']] }, 'interfaces[0]: must be an object');
    invalid({ cniVersion: '1.0.0', interfaces: [{ name: '' }] }, 'interfaces[0].name: is empty');
    invalid({ cniVersion: '1.0.0', interfaces: [{ name: 'a', mtu: '5' }] }, 'interfaces[0].mtu: must be an unsigned integer, not "5"');
    invalid({ cniVersion: '1.0.0', interfaces: [{ name: 'a', mtu: 1.5 }] }, 'interfaces[0].mtu: must be an unsigned integer, not 1.5');
    invalid({ cniVersion: '1.0.0', ips: [5] }, 'ips[0]: must be an object');
    invalid({ cniVersion: '1.0.0', routes: ['10.0.0.0/8'] }, 'routes[0]: must be an object');
    invalid({ cniVersion: '1.0.0', dns: 'x' }, 'dns: must be an object');
    invalid({ cniVersion: '1.0.0', dns: { nameservers: ['1.1.1.1', 7] } }, 'dns.nameservers: must be a list of strings');
    invalid({ cniVersion: '1.0.0', dns: { domain: 5 } }, 'dns.domain: must be a string, not 5');
    invalid({ cniVersion: '1.0.0', dns: { options: 'x' } }, 'dns.options: must be a list of strings');
    invalid({ cniVersion: '2.0.0' }, 'cniVersion: results of CNI 2.0.0 are not supported (0.3.0 to 1.x are)');
    // Absent, null and empty optional values leave no key behind.
    const { raw, result } = parseResult(
      { cniVersion: '', interfaces: [{ name: 'a', mac: '', sandbox: '' }], ips: null, routes: null, dns: { search: null, domain: '' } },
      '1.0.0',
    );
    expect(raw['cniVersion']).toBe('1.0.0');
    expect(Object.keys(result.interfaces[0]!)).toEqual(['name']);
    expect(result.ips).toEqual([]);
    expect(result.routes).toEqual([]);
    expect(Object.keys(result.dns)).toEqual([]);
    expect(Object.keys(parseResult({ cniVersion: '1.0.0', dns: null }, '1.0.0').result.dns)).toEqual([]);
    expect(parseResult({ cniVersion: '1.9.9' }, '1.0.0').result.sourceVersion).toBe('1.9.9');
  });

  it('compares versions numerically', () => {
    expect(['1.0.0', '0.10.0', '0.4.0', '0.3.1'].sort(compareVersions)).toEqual(['0.3.1', '0.4.0', '0.10.0', '1.0.0']);
    expect(() => compareVersions('1.0', '1.0.0')).toThrow(TypeError);
  });
});
