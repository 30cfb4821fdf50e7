import { describe, expect, it } from 'vitest';
import { GuestBuildError } from '../../src/guest/errors.js';
import { moduleName, parseModuleIndex, resolveModules } from '../../src/guest/modules.js';

// Lines as depmod writes them for Debian's 6.1 cloud kernel.
const MODULES_DEP = `kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/fs/fuse/virtiofs.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/fs/fuse/fuse.ko
kernel/fs/fuse/fuse.ko:
kernel/fs/erofs/erofs.ko: kernel/lib/libcrc32c.ko
kernel/lib/libcrc32c.ko:
`;
const BUILTIN = 'kernel/net/packet/af_packet.ko\nkernel/fs/ext4/ext4.ko\n';

describe('guest modules', () => {
  const index = parseModuleIndex(MODULES_DEP, BUILTIN);

  it('names modules as modprobe does', () => {
    expect(moduleName('kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko')).toBe('vmw_vsock_virtio_transport');
    expect(moduleName('kernel/drivers/net/virtio-net.ko.xz')).toBe('virtio_net');
  });

  it('puts every module after its dependencies, transports first, each once', () => {
    const { load, builtin } = resolveModules(index, ['virtio_pci', 'virtio_mmio', 'virtio-net', 'virtiofs', 'af_packet'], '6.1.0-test');
    expect(builtin).toEqual(['af_packet']);
    expect(new Set(load).size).toBe(load.length);
    const at = (name: string): number => load.findIndex((p) => moduleName(p) === name);
    for (const [modulePath, deps] of index.deps) {
      if (!load.includes(modulePath)) continue;
      for (const dep of deps) expect(load.indexOf(dep)).toBeLessThan(load.indexOf(modulePath));
    }
    expect(at('virtio_pci')).toBeLessThan(at('virtio_mmio'));
    expect(at('virtio_mmio')).toBeLessThan(at('virtio_net'));
    expect(at('virtio_net')).toBeLessThan(at('fuse'));
    expect(load.map(moduleName)).toEqual([
      'virtio_pci_legacy_dev',
      'virtio_pci_modern_dev',
      'virtio_ring',
      'virtio',
      'virtio_pci',
      'virtio_mmio',
      'failover',
      'net_failover',
      'virtio_net',
      'fuse',
      'virtiofs',
    ]);
  });

  it('refuses a module the kernel neither has nor builds in', () => {
    expect(() => resolveModules(index, ['9pnet_virtio'], '6.1.0-test')).toThrow(GuestBuildError);
    expect(() => resolveModules(index, ['9pnet_virtio'], '6.1.0-test')).toThrow(/has no module "9pnet_virtio"/);
  });

  it('detects a broken modules.dep (missing dependency, cycle)', () => {
    const broken = parseModuleIndex('kernel/a.ko: kernel/b.ko\n', '');
    expect(() => resolveModules(broken, ['a'], 'x')).toThrow(/missing from modules.dep/);
    const cycle = parseModuleIndex('kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\n', '');
    expect(() => resolveModules(cycle, ['a'], 'x')).toThrow(/cycle/);
  });
});
