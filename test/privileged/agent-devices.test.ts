/**
 * FindDevice: the agent finds a device the host plugged by its guest PCI path, in a fake sysfs
 * tree (`--sys-root`) shaped like a q35 guest's: root ports on bus 0, a device behind each, a
 * virtio-net NIC (interface under virtioN/net), a passed-through NIC (interface under net/), a
 * bridge behind a port, and a device that appears (and gets its interface) only later.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { AGENT_BINARY, haveAgent, isRoot, startHostAgent, type HostAgent } from './agent-host.js';

const ready = isRoot && haveAgent;

/** Makes DIR/devices/pci0000:00/... entries and a driver link for each device. */
function device(root: string, chain: string[], driver?: string, net?: { via?: string; name: string }): string {
  const dir = path.join(root, 'devices', 'pci0000:00', ...chain);
  fs.mkdirSync(dir, { recursive: true });
  if (driver) {
    fs.mkdirSync(path.join(root, 'bus', 'pci', 'drivers', driver), { recursive: true });
    fs.symlinkSync(path.relative(dir, path.join(root, 'bus', 'pci', 'drivers', driver)), path.join(dir, 'driver'));
  }
  if (net) fs.mkdirSync(path.join(dir, ...(net.via ? [net.via] : []), 'net', net.name), { recursive: true });
  return dir;
}

describe.skipIf(!ready)(`the agent's FindDevice on a fake sysfs (${ready ? 'root' : `needs root and ${AGENT_BINARY}`})`, () => {
  let root: string;
  let agent: HostAgent;

  beforeAll(async () => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-sysfs-'));
    device(root, ['0000:00:10.0'], 'pcieport');
    device(root, ['0000:00:10.0', '0000:01:00.0'], 'virtio-pci', { via: 'virtio3', name: 'eth1' });
    device(root, ['0000:00:11.0'], 'pcieport');
    device(root, ['0000:00:11.0', '0000:02:00.0'], 'ixgbevf', { name: 'ens2' });
    device(root, ['0000:00:12.0'], 'pcieport');
    device(root, ['0000:00:12.0', '0000:03:00.0'], 'vfio-pci');
    device(root, ['0000:00:13.0'], 'pcieport');
    device(root, ['0000:00:13.0', '0000:04:00.0']); // a bridge behind the port
    device(root, ['0000:00:13.0', '0000:04:00.0', '0000:05:01.0'], 'virtio-pci', { via: 'virtio7', name: 'eth2' });
    agent = await startHostAgent({ cgroups: false, sysRoot: root });
  });

  afterAll(async () => {
    expect(await agent?.cleanup()).toBe(0);
    fs.rmSync(root, { recursive: true, force: true });
  });

  it('names the guest address, driver and interfaces of a device by its path', async () => {
    const pci = (...chain: string[]) => path.join(root, 'devices', 'pci0000:00', ...chain);
    expect(await agent.client.findDevice({ pciPath: '10/00', netdev: true })).toEqual({
      pciAddress: '0000:01:00.0',
      sysfsPath: pci('0000:00:10.0', '0000:01:00.0'),
      driver: 'virtio-pci',
      netdevs: ['eth1'],
    });
    expect(await agent.client.findDevice({ pciPath: '11/00' })).toMatchObject({ pciAddress: '0000:02:00.0', driver: 'ixgbevf', netdevs: ['ens2'] });
    expect(await agent.client.findDevice({ pciPath: '12/00' })).toMatchObject({ pciAddress: '0000:03:00.0', driver: 'vfio-pci', netdevs: [] });
    expect(await agent.client.findDevice({ pciPath: '13/00/01' })).toMatchObject({ pciAddress: '0000:05:01.0', netdevs: ['eth2'] });
    expect(await agent.client.findDevice({ pciPath: '13/00' })).toEqual({ pciAddress: '0000:04:00.0', sysfsPath: pci('0000:00:13.0', '0000:04:00.0'), driver: null, netdevs: [] });
  });

  it('waits for a device that appears later, and with netdev for its interface', async () => {
    const pending = agent.client.findDevice({ pciPath: '14/00', netdev: true, timeoutMs: 10_000 });
    await new Promise((r) => setTimeout(r, 300));
    const dir = device(root, ['0000:00:14.0', '0000:06:00.0'], 'virtio-pci');
    await new Promise((r) => setTimeout(r, 300)); // there, but no interface yet: still waiting
    fs.mkdirSync(path.join(dir, 'virtio9', 'net', 'eth3'), { recursive: true });
    expect(await pending).toMatchObject({ pciAddress: '0000:06:00.0', netdevs: ['eth3'] });
  });

  it('gives up with NOT_FOUND after its timeout, and refuses malformed paths before asking', async () => {
    await expect(agent.client.findDevice({ pciPath: '15/00', timeoutMs: 200 })).rejects.toMatchObject({ agentCode: 'NOT_FOUND', message: expect.stringMatching(/no device at PCI path 15\/00 appeared in time/u) });
    await expect(agent.client.findDevice({ pciPath: '12/00', netdev: true, timeoutMs: 200 })).rejects.toMatchObject({
      agentCode: 'NOT_FOUND',
      message: expect.stringMatching(/no network interface on the device at PCI path 12\/00/u),
    });
    for (const bad of ['', '1', '20/00', '10/', '../10', '10/00/00/00/00/00/00/00/00', 'AA/00']) {
      await expect(agent.client.findDevice({ pciPath: bad })).rejects.toBeInstanceOf(InvalidArgumentError);
    }
  });
});
