import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import type { HostFacts } from '../../src/hypervisor/host.js';
import type { VmConfig, VmDevice } from '../../src/hypervisor/hypervisor.js';
import { buildQemuCommandLine, QEMU_SANDBOX, QEMU_SANDBOX_RUNAS, rootPortPciPath } from '../../src/hypervisor/qemu/cmdline.js';
import { optionString, optionValue } from '../../src/hypervisor/qemu/options.js';

const tcg: HostFacts = { kvm: false, vhostNet: false, tscKhz: 2596145 };
const kvm: HostFacts = { kvm: true, vhostNet: true, tscKhz: 2596145 };

function config(overrides: Partial<VmConfig> = {}): VmConfig {
  return {
    id: 'vm1',
    cpus: 2,
    memory: { sizeMiB: 256 },
    kernel: '/a/vmlinux',
    initramfs: '/a/initramfs.cpio',
    consoleLog: '/run/vm1/console.log',
    runDir: '/run/vm1',
    hotplugPorts: 0,
    ...overrides,
  };
}

/** The values following each occurrence of `flag`. */
function values(args: readonly string[], flag: string): string[] {
  return args.flatMap((a, i) => (a === flag ? [args[i + 1] ?? ''] : []));
}

function rejects(fn: () => unknown, field: string, pattern: RegExp): void {
  let error: unknown;
  try {
    fn();
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(InvalidArgumentError);
  expect((error as InvalidArgumentError).field).toBe(field);
  expect((error as Error).message).toMatch(pattern);
}

describe('QEMU option escaping', () => {
  it('doubles commas and refuses control characters', () => {
    expect(optionValue('/a,b/c', 'f')).toBe('/a,,b/c');
    expect(optionValue(true, 'f')).toBe('on');
    expect(optionString('socket', [['id', 'x'], ['path', '/p,q'], ['skip', undefined]], 'f')).toBe('socket,id=x,path=/p,,q');
    rejects(() => optionValue('a\nb', 'f'), 'f', /control characters/);
    rejects(() => optionValue('a\0b', 'f'), 'f', /control characters/);
  });
});

describe('buildQemuCommandLine: machine profiles', () => {
  it('q35 under TCG: exact command line', () => {
    const cmd = buildQemuCommandLine(config({ hotplugPorts: 2 }), { host: tcg, monitors: 1 });
    expect(cmd.accel).toBe('tcg');
    expect(cmd.args).toEqual([
      '-name', 'vm1',
      '-machine', 'q35',
      '-accel', 'tcg',
      '-cpu', 'max',
      '-smp', '2',
      '-m', '256M',
      '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
      '-sandbox', 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny',
      '-chardev', 'socket,id=qmp0,path=/run/vm1/qmp.sock,server=on,wait=off',
      '-mon', 'chardev=qmp0,mode=control',
      '-chardev', 'file,id=console,path=/run/vm1/console.log,append=on',
      '-serial', 'chardev:console',
      '-kernel', '/a/vmlinux',
      '-initrd', '/a/initramfs.cpio',
      '-append', 'console=ttyS0 quiet panic=-1',
      '-device', 'pcie-root-port,id=rp0,bus=pcie.0,chassis=1,addr=0x10',
      '-device', 'pcie-root-port,id=rp1,bus=pcie.0,chassis=2,addr=0x11',
    ]);
    expect(cmd.qmpSockets).toEqual(['/run/vm1/qmp.sock']);
    expect(cmd.rootPorts).toEqual(['rp0', 'rp1']);
    expect(cmd.fds).toEqual([]);
  });

  it('microvm: rtc and acpi on, no option ROMs, tsc_early_khz from the host', () => {
    const cmd = buildQemuCommandLine(config({ machine: 'microvm', kernelArgs: ['loglevel=7'] }), { host: tcg });
    expect(values(cmd.args, '-machine')).toEqual(['microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=on']);
    expect(values(cmd.args, '-append')).toEqual(['console=ttyS0 quiet panic=-1 tsc_early_khz=2596145 loglevel=7']);
    expect(values(cmd.args, '-device').some((d) => d.startsWith('pcie-root-port'))).toBe(false);
    expect(cmd.rootPorts).toEqual([]);
    expect(cmd.args).not.toContain('-global');
  });

  it('microvm without a known TSC frequency is refused', () => {
    rejects(() => buildQemuCommandLine(config({ machine: 'microvm' }), { host: { ...tcg, tscKhz: undefined } }), 'tscKhz', /TSC frequency/);
  });

  it('KVM: -accel kvm and -cpu host; refused when the host has no KVM', () => {
    const cmd = buildQemuCommandLine(config(), { host: kvm });
    expect(values(cmd.args, '-accel')).toEqual(['kvm']);
    expect(values(cmd.args, '-cpu')).toEqual(['host']);
    expect(values(buildQemuCommandLine(config(), { host: kvm, accel: 'tcg' }).args, '-accel')).toEqual(['tcg']);
    rejects(() => buildQemuCommandLine(config(), { host: tcg, accel: 'kvm' }), 'accel', /KVM/);
  });

  it('three QMP monitors by default, seccomp can be turned off', () => {
    const cmd = buildQemuCommandLine(config(), { host: tcg, seccomp: false });
    expect(cmd.qmpSockets).toEqual(['/run/vm1/qmp.sock', '/run/vm1/qmp-1.sock', '/run/vm1/qmp-2.sock']);
    expect(values(cmd.args, '-mon')).toEqual(['chardev=qmp0,mode=control', 'chardev=qmp1,mode=control', 'chardev=qmp2,mode=control']);
    expect(cmd.args).not.toContain('-sandbox');
    expect(values(buildQemuCommandLine(config(), { host: tcg }).args, '-sandbox')).toEqual([QEMU_SANDBOX]);
  });

  it('drops to an unprivileged user with -runas, letting the seccomp filter allow that one setuid', () => {
    const cmd = buildQemuCommandLine(config({ runAs: { uid: 65534, gid: 65534 } }), { host: tcg });
    expect(values(cmd.args, '-runas')).toEqual(['65534:65534']);
    expect(values(cmd.args, '-sandbox')).toEqual([QEMU_SANDBOX_RUNAS]);
    expect(QEMU_SANDBOX_RUNAS).toBe(QEMU_SANDBOX.replace('elevateprivileges=deny', 'elevateprivileges=allow'));
    expect(buildQemuCommandLine(config(), { host: tcg }).args).not.toContain('-runas');
    rejects(() => buildQemuCommandLine(config({ runAs: { uid: 0, gid: 0 } }), { host: tcg }), 'runAs.uid', /not an integer in \[1,/);
    rejects(() => buildQemuCommandLine(config({ runAs: { uid: 1000, gid: 1.5 } }), { host: tcg }), 'runAs.gid', /not an integer/);
  });

  it('four hotplug ports by default on q35', () => {
    const cmd = buildQemuCommandLine(config({ hotplugPorts: undefined as unknown as number }), { host: tcg });
    expect(cmd.rootPorts).toEqual(['rp0', 'rp1', 'rp2', 'rp3']);
    expect(rootPortPciPath('rp2')).toBe('12/00');
  });
});

describe('buildQemuCommandLine: memory backends', () => {
  it('anonymous memory is plain -m', () => {
    expect(values(buildQemuCommandLine(config(), { host: tcg }).args, '-object')).toEqual([]);
  });
  it('memfd is shared by default and named in -machine', () => {
    const cmd = buildQemuCommandLine(config({ memory: { sizeMiB: 512, backend: { kind: 'memfd' } } }), { host: tcg });
    expect(values(cmd.args, '-object')).toEqual(['memory-backend-memfd,id=mem0,size=512M,share=on']);
    expect(values(cmd.args, '-machine')).toEqual(['q35,memory-backend=mem0']);
    expect(values(cmd.args, '-m')).toEqual(['512M']);
  });
  it('memfd on hugepages with prealloc', () => {
    const cmd = buildQemuCommandLine(
      config({ memory: { sizeMiB: 256, backend: { kind: 'memfd', hugepageSizeKiB: 2048 }, prealloc: true } }),
      { host: tcg },
    );
    expect(values(cmd.args, '-object')).toEqual(['memory-backend-memfd,id=mem0,size=256M,share=on,hugetlb=on,hugetlbsize=2048K,prealloc=on']);
  });
  it('a hugetlbfs file backend, escaped', () => {
    const cmd = buildQemuCommandLine(
      config({ machine: 'microvm', memory: { sizeMiB: 256, backend: { kind: 'file', path: '/dev/hugepages/v,m1' }, shared: true } }),
      { host: tcg },
    );
    expect(values(cmd.args, '-object')).toEqual(['memory-backend-file,id=mem0,size=256M,mem-path=/dev/hugepages/v,,m1,share=on']);
    expect(values(cmd.args, '-machine')[0]).toMatch(/,memory-backend=mem0$/u);
  });
  it('rejects a hugepage size that does not divide the RAM, and shared anonymous RAM', () => {
    rejects(
      () => buildQemuCommandLine(config({ memory: { sizeMiB: 257, backend: { kind: 'memfd', hugepageSizeKiB: 2048 } } }), { host: tcg }),
      'memory.sizeMiB',
      /multiple of the hugepage size/,
    );
    rejects(() => buildQemuCommandLine(config({ memory: { sizeMiB: 256, shared: true } }), { host: tcg }), 'memory.shared', /cannot be shared/);
    rejects(
      () => buildQemuCommandLine(config({ memory: { sizeMiB: 256, backend: { kind: 'memfd', hugepageSizeKiB: 4 } } }), { host: tcg }),
      'memory.backend.hugepageSizeKiB',
      /2048/,
    );
  });
});

const serial: VmDevice = { kind: 'virtio-serial', id: 'vs0', ports: [{ name: 'agent', socket: '/run/vm1/agent.sock' }, { name: 'a2', socket: '/run/vm1/a2.sock' }] };

describe('buildQemuCommandLine: devices', () => {
  it('virtio-serial with named ports on server sockets (q35 and microvm)', () => {
    const cmd = buildQemuCommandLine(config({ devices: [serial] }), { host: tcg });
    expect(values(cmd.args, '-device').slice(-3)).toEqual([
      'virtio-serial-pci,id=vs0',
      'virtserialport,bus=vs0.0,nr=1,chardev=chr-vs0-0,name=agent',
      'virtserialport,bus=vs0.0,nr=2,chardev=chr-vs0-1,name=a2',
    ]);
    expect(values(cmd.args, '-chardev').slice(-2)).toEqual([
      'socket,id=chr-vs0-0,path=/run/vm1/agent.sock,server=on,wait=off',
      'socket,id=chr-vs0-1,path=/run/vm1/a2.sock,server=on,wait=off',
    ]);
    expect(cmd.sockets).toEqual(['/run/vm1/agent.sock', '/run/vm1/a2.sock']);
    const micro = buildQemuCommandLine(config({ machine: 'microvm', devices: [serial] }), { host: tcg });
    expect(values(micro.args, '-device')[0]).toBe('virtio-serial-device,id=vs0');
  });

  it('virtio-net on inherited tap fds: fds become 3, 4, ...; multiqueue sets mq and vectors', () => {
    const cmd = buildQemuCommandLine(
      config({
        devices: [
          { kind: 'virtio-net', id: 'n0', tap: { fds: [17] }, mac: '02:00:00:00:00:01', mtu: 1400 },
          { kind: 'virtio-net', id: 'n1', tap: { fds: [21, 22] }, rootPort: true },
        ],
      }),
      { host: tcg },
    );
    expect(cmd.fds).toEqual([17, 21, 22]);
    expect(values(cmd.args, '-netdev')).toEqual(['tap,id=net-n0,fd=3,vhost=off', 'tap,id=net-n1,fds=4:5,vhost=off']);
    expect(values(cmd.args, '-device').filter((d) => d.startsWith('virtio-net'))).toEqual([
      'virtio-net-pci,id=n0,netdev=net-n0,mac=02:00:00:00:00:01,host_mtu=1400,romfile=',
      'virtio-net-pci,id=n1,bus=rp0,netdev=net-n1,mq=on,vectors=6,romfile=',
    ]);
    // One port for n1, none for hotplug (hotplugPorts 0).
    expect(cmd.rootPorts).toEqual(['rp0']);
  });

  it('virtio-net on a tap by name, and vhost only where /dev/vhost-net exists', () => {
    // The kernel allows ',' in interface names: it is escaped, not refused.
    const comma: VmDevice = { kind: 'virtio-net', id: 'n0', tap: { ifname: 'tap,0' } };
    expect(values(buildQemuCommandLine(config({ devices: [comma] }), { host: tcg }).args, '-netdev')).toEqual([
      'tap,id=net-n0,ifname=tap,,0,script=no,downscript=no,vhost=off',
    ]);
    rejects(
      () => buildQemuCommandLine(config({ devices: [{ kind: 'virtio-net', id: 'n0', tap: { ifname: 'tap 0' } }] }), { host: tcg }),
      'devices[0].tap.ifname',
      /whitespace/,
    );
    const ok: VmDevice = { kind: 'virtio-net', id: 'n0', tap: { ifname: 'vt0a1', queues: 2 }, vhost: true };
    expect(values(buildQemuCommandLine(config({ devices: [ok] }), { host: kvm }).args, '-netdev')).toEqual([
      'tap,id=net-n0,ifname=vt0a1,script=no,downscript=no,queues=2,vhost=on',
    ]);
    rejects(() => buildQemuCommandLine(config({ devices: [ok] }), { host: tcg }), 'devices[0].vhost', /vhost-net/);
  });

  it('vhost-user-net: needs shared RAM; vectors=0 under TCG, MSI-X under KVM', () => {
    const device: VmDevice = { kind: 'vhost-user-net', id: 'du0', socket: '/run/dpdk/vhu0.sock', mode: 'client', queues: 2, mac: '02:00:00:00:00:02' };
    rejects(() => buildQemuCommandLine(config({ devices: [device] }), { host: tcg }), 'memory.backend', /shared: true/);
    const memory = { sizeMiB: 256, backend: { kind: 'memfd' as const } };
    const t = buildQemuCommandLine(config({ memory, devices: [device] }), { host: tcg });
    expect(values(t.args, '-chardev').at(-1)).toBe('socket,id=chr-du0,path=/run/dpdk/vhu0.sock');
    expect(values(t.args, '-netdev')).toEqual(['vhost-user,id=net-du0,chardev=chr-du0,queues=2']);
    expect(values(t.args, '-device').at(-1)).toBe('virtio-net-pci,id=du0,netdev=net-du0,mac=02:00:00:00:00:02,mq=on,vectors=0,romfile=');
    const k = buildQemuCommandLine(config({ memory, devices: [{ ...device, mode: 'server' }] }), { host: kvm });
    expect(values(k.args, '-chardev').at(-1)).toBe('socket,id=chr-du0,path=/run/dpdk/vhu0.sock,server=on,wait=off');
    expect(values(k.args, '-device').at(-1)).toBe('virtio-net-pci,id=du0,netdev=net-du0,mac=02:00:00:00:00:02,mq=on,vectors=6,romfile=');
    expect(k.sockets).toEqual(['/run/dpdk/vhu0.sock']);
  });

  it('vhost-user-fs on q35 and on microvm (which then leaves legacy virtio-mmio)', () => {
    const device: VmDevice = { kind: 'vhost-user-fs', id: 'fs0', socket: '/run/vm1/fs0.sock', tag: 'share', queueSize: 1024 };
    const memory = { sizeMiB: 256, backend: { kind: 'memfd' as const } };
    const q = buildQemuCommandLine(config({ memory, devices: [device] }), { host: tcg });
    expect(values(q.args, '-device').at(-1)).toBe('vhost-user-fs-pci,id=fs0,chardev=chr-fs0,tag=share,queue-size=1024');
    expect(q.args).not.toContain('-global');
    const m = buildQemuCommandLine(config({ machine: 'microvm', memory, devices: [device] }), { host: tcg });
    expect(values(m.args, '-device').at(-1)).toBe('vhost-user-fs-device,id=fs0,chardev=chr-fs0,tag=share,queue-size=1024');
    expect(values(m.args, '-global')).toEqual(['virtio-mmio.force-legacy=false']);
    rejects(
      () => buildQemuCommandLine(config({ memory, devices: [{ ...device, tag: 'x'.repeat(37) }] }), { host: tcg }),
      'devices[0].tag',
      /virtio-fs tag/,
    );
    rejects(
      () => buildQemuCommandLine(config({ memory, devices: [{ ...device, queueSize: 1000 }] }), { host: tcg }),
      'devices[0].queueSize',
      /power of two/,
    );
  });

  it('virtio-blk from a file (escaped) and from a host block device', () => {
    const cmd = buildQemuCommandLine(
      config({
        devices: [
          { kind: 'virtio-blk', id: 'd0', path: '/img/root,1.ext4', readOnly: true, serial: 'root' },
          { kind: 'virtio-blk', id: 'd1', path: '/dev/sdb', format: 'raw' },
          { kind: 'virtio-blk', id: 'd2', path: '/img/data.qcow2', format: 'qcow2', rootPort: true },
        ],
      }),
      { host: tcg },
    );
    expect(values(cmd.args, '-blockdev')).toEqual([
      'driver=file,node-name=file-d0,filename=/img/root,,1.ext4,read-only=on',
      'driver=raw,node-name=blk-d0,file=file-d0,read-only=on',
      'driver=host_device,node-name=file-d1,filename=/dev/sdb',
      'driver=raw,node-name=blk-d1,file=file-d1',
      'driver=file,node-name=file-d2,filename=/img/data.qcow2',
      'driver=qcow2,node-name=blk-d2,file=file-d2',
    ]);
    expect(values(cmd.args, '-device').filter((d) => d.startsWith('virtio-blk'))).toEqual([
      'virtio-blk-pci,id=d0,drive=blk-d0,serial=root',
      'virtio-blk-pci,id=d1,drive=blk-d1',
      'virtio-blk-pci,id=d2,bus=rp0,drive=blk-d2',
    ]);
  });

  it('virtio-9p: -fsdev local plus the device; read-only; tag checked', () => {
    const device: VmDevice = { kind: 'virtio-9p', id: 'p9', path: '/srv/share,1', tag: 'vol1', readOnly: true };
    const cmd = buildQemuCommandLine(config({ devices: [device] }), { host: tcg });
    expect(values(cmd.args, '-fsdev')).toEqual(['local,id=fsdev-p9,path=/srv/share,,1,security_model=none,readonly=on']);
    expect(values(cmd.args, '-device').at(-1)).toBe('virtio-9p-pci,id=p9,fsdev=fsdev-p9,mount_tag=vol1');
    const micro = buildQemuCommandLine(config({ machine: 'microvm', devices: [{ ...device, securityModel: 'mapped-xattr', readOnly: false }] }), { host: tcg });
    expect(values(micro.args, '-fsdev')).toEqual(['local,id=fsdev-p9,path=/srv/share,,1,security_model=mapped-xattr']);
    expect(values(micro.args, '-device').at(-1)).toBe('virtio-9p-device,id=p9,fsdev=fsdev-p9,mount_tag=vol1');
    rejects(() => buildQemuCommandLine(config({ devices: [{ ...device, tag: 'a b' }] }), { host: tcg }), 'devices[0].tag', /9p mount tag/);
  });

  it('vsock only where /dev/vhost-vsock exists', () => {
    const device: VmDevice = { kind: 'vsock', id: 'vsock0', cid: 42 };
    expect(values(buildQemuCommandLine(config({ devices: [device] }), { host: { ...kvm, vhostVsock: true } }).args, '-device').at(-1)).toBe(
      'vhost-vsock-pci,id=vsock0,guest-cid=42',
    );
    rejects(() => buildQemuCommandLine(config({ devices: [device] }), { host: tcg }), 'devices[0]', /vhost-vsock/);
    rejects(() => buildQemuCommandLine(config({ devices: [{ ...device, cid: 2 }] }), { host: tcg }), 'devices[0].cid', /integer in/);
  });

  it('vfio-pci on a root port; refused on microvm and with a bad address', () => {
    const device: VmDevice = { kind: 'vfio-pci', id: 'vf0', host: '0000:3B:02.1', rootPort: true };
    const cmd = buildQemuCommandLine(config({ hotplugPorts: 1, devices: [device] }), { host: tcg });
    expect(values(cmd.args, '-device').at(-1)).toBe('vfio-pci,id=vf0,bus=rp0,host=0000:3B:02.1');
    expect(cmd.rootPorts).toEqual(['rp0', 'rp1']);
    rejects(() => buildQemuCommandLine(config({ machine: 'microvm', devices: [{ ...device, rootPort: false }] }), { host: tcg }), 'devices[0]', /no PCI bus/);
    rejects(() => buildQemuCommandLine(config({ devices: [{ ...device, host: '3b:02.1' }] }), { host: tcg }), 'devices[0].host', /PCI address/);
  });
});

describe('buildQemuCommandLine: rejected input', () => {
  const memfd = { sizeMiB: 256, backend: { kind: 'memfd' as const } };
  it.each([
    ['an id with a slash', { id: 'a/b' }, 'id', /not a valid id/],
    ['zero vCPUs', { cpus: 0 }, 'cpus', /integer in/],
    ['too little RAM', { memory: { sizeMiB: 8 } }, 'memory.sizeMiB', /integer in/],
    ['a relative kernel', { kernel: 'vmlinux' }, 'kernel', /absolute path/],
    ['a kernel path with a comma', { kernel: '/a,b/vmlinux' }, 'kernel', /contains ','/],
    ['a kernel argument with a space', { kernelArgs: ['a b'] }, 'kernelArgs[0]', /kernel argument/],
    ['a kernel argument with a quote', { kernelArgs: ['a="b"'] }, 'kernelArgs[0]', /kernel argument/],
    ['a kernel argument with a newline', { kernelArgs: ['a\nreboot'] }, 'kernelArgs[0]', /kernel argument/],
    ['an over-long command line', { kernelArgs: Array.from({ length: 300 }, () => 'abcdefgh') }, 'kernelArgs', /more than 2047/],
    ['too many root ports', { hotplugPorts: 16 }, 'hotplugPorts', /integer in/],
    ['a run dir too long for sun_path', { runDir: `/${'r'.repeat(100)}` }, 'runDir', /longer than 107/],
  ] as const)('%s', (_name, overrides, field, pattern) => {
    rejects(() => buildQemuCommandLine(config(overrides as Partial<VmConfig>), { host: tcg }), field, pattern);
  });

  it.each([
    ['a device id with a comma', { ...serial, id: 'v,s' }, 'devices[0].id', /not a device id/],
    ['a reserved device id', { ...serial, id: 'rp1' }, 'devices[0].id', /not a device id/],
    ['a port name with a comma', { ...serial, ports: [{ name: 'a,b', socket: '/s' }] }, 'devices[0].ports[0].name', /port name/],
    ['duplicate port names', { ...serial, ports: [{ name: 'a', socket: '/s1' }, { name: 'a', socket: '/s2' }] }, 'devices[0].ports', /unique/],
    ['a socket path with a newline', { ...serial, ports: [{ name: 'a', socket: '/s\n' }] }, 'devices[0].ports[0].socket', /control characters/],
    ['a negative tap fd', { kind: 'virtio-net', id: 'n', tap: { fds: [-1] } }, 'devices[0].tap.fds[0]', /integer in/],
    ['no tap fds', { kind: 'virtio-net', id: 'n', tap: { fds: [] } }, 'devices[0].tap', /fds/],
    ['a bad MAC', { kind: 'virtio-net', id: 'n', tap: { fds: [3] }, mac: '02:00:00:00:00' }, 'devices[0].mac', /MAC/],
    ['a bad disk serial', { kind: 'virtio-blk', id: 'd', path: '/i', serial: 'x,y' }, 'devices[0].serial', /serial/],
    ['an unknown kind', { kind: 'floppy', id: 'f' }, 'devices[0].kind', /unknown device kind/],
  ] as const)('%s', (_name, device, field, pattern) => {
    rejects(() => buildQemuCommandLine(config({ memory: memfd, devices: [device as unknown as VmDevice] }), { host: tcg }), field, pattern);
  });

  it('duplicate device ids and shared sockets', () => {
    rejects(() => buildQemuCommandLine(config({ devices: [serial, { ...serial, ports: [{ name: 'x', socket: '/y' }] }] }), { host: tcg }), 'devices[1].id', /duplicate/);
    rejects(
      () => buildQemuCommandLine(config({ devices: [serial, { ...serial, id: 'vs1' }] }), { host: tcg }),
      'devices',
      /same socket path/,
    );
  });
});
