/**
 * VFIO and PCI discovery against this host's real /sys. Discovery and the refusal paths run with
 * writes forbidden (a guard Sysfs), so nothing here can unbind a real device. The bind/restore
 * round trip needs VFIO hardware: it runs only when VMPOD_TEST_VFIO_DEVICE names a device.
 */
import { existsSync, readlinkSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { FeatureUnavailableError } from '../../src/devices/errors.js';
import { iommuGroupDevices, listPciDevices, pciDevice } from '../../src/devices/pci.js';
import { Sysfs } from '../../src/devices/sysfs.js';
import { bindVfio, checkVfioGroup } from '../../src/devices/vfio.js';

class ReadOnlySysfs extends Sysfs {
  override async write(rel: string): Promise<void> {
    throw new Error(`test guard: refused a write to ${rel}`);
  }
}
const sysfs = new ReadOnlySysfs('/sys');
const hasVfio = existsSync('/sys/bus/pci/drivers/vfio-pci');
const hardware = process.env['VMPOD_TEST_VFIO_DEVICE'];

const hex = async (p: string): Promise<string> => (await fs.readFile(p, 'utf8')).trim().replace(/^0x/u, '');

describe('PCI discovery on this host (read-only)', () => {
  it('describes every PCI device as sysfs shows it', async () => {
    const names = (await fs.readdir('/sys/bus/pci/devices')).sort();
    expect(await listPciDevices({ sysfs })).toEqual(names);
    expect(names.length).toBeGreaterThan(0);
    for (const address of names) {
      const dir = `/sys/bus/pci/devices/${address}`;
      const d = await pciDevice(address, { sysfs });
      expect(d.vendor).toBe(await hex(`${dir}/vendor`));
      expect(d.device).toBe(await hex(`${dir}/device`));
      expect(d.class).toBe(await hex(`${dir}/class`));
      expect(d.driver).toBe(existsSync(`${dir}/driver`) ? path.basename(readlinkSync(`${dir}/driver`)) : null);
      expect(d.iommuGroup).toBe(existsSync(`${dir}/iommu_group`) ? Number(path.basename(readlinkSync(`${dir}/iommu_group`))) : null);
      if (d.iommuGroup !== null) expect(await iommuGroupDevices(d.iommuGroup, { sysfs })).toContain(address);
    }
  });

  it('finds the netdev of every PCI network interface, as /sys/class/net/NAME/device says', async () => {
    let checked = 0;
    for (const name of await fs.readdir('/sys/class/net')) {
      let real: string;
      try {
        real = await fs.realpath(`/sys/class/net/${name}/device`);
      } catch {
        continue; // virtual interface
      }
      // The device link points at the PCI function or at a child of it (virtio-net: virtioN).
      const address = [path.basename(real), path.basename(path.dirname(real))].find((n) => /^[0-9a-f]{4}:/u.test(n));
      if (address === undefined) continue;
      expect((await pciDevice(address, { sysfs })).netdevs).toContain(name);
      checked++;
    }
    expect.soft(checked, 'no PCI network interface on this host').toBeGreaterThan(0);
  });

  it.skipIf(hasVfio)('refuses to bind when vfio-pci is absent (as here), without writing anything', async () => {
    const [address] = await listPciDevices({ sysfs });
    const error = await checkVfioGroup(address!, { sysfs }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(FeatureUnavailableError);
    expect(await bindVfio(address!, { sysfs }).catch((e: unknown) => e)).toBeInstanceOf(FeatureUnavailableError);
  });
});

describe('VFIO on real hardware', () => {
  it.skipIf(hardware === undefined)(
    'binds $VMPOD_TEST_VFIO_DEVICE and its IOMMU group to vfio-pci and restores the original drivers (skipped: set VMPOD_TEST_VFIO_DEVICE=DDDD:BB:DD.F, and VMPOD_TEST_VFIO_FORCE=1 for a device in use)',
    async () => {
      const address = hardware!;
      const { iommuGroup, members } = await checkVfioGroup(address, { force: process.env['VMPOD_TEST_VFIO_FORCE'] === '1' });
      const binding = await bindVfio(address, { force: process.env['VMPOD_TEST_VFIO_FORCE'] === '1' });
      try {
        expect(binding.iommuGroup).toBe(iommuGroup);
        for (const m of members) expect((await pciDevice(m.address)).driver).toBe('vfio-pci');
        expect(existsSync(binding.groupDevice)).toBe(true);
      } finally {
        await binding.release();
      }
      for (const m of members) expect((await pciDevice(m.address)).driver).toBe(m.driver);
    },
  );
});
