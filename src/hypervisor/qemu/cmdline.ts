/**
 * The QEMU command line, generated from a typed {@link VmConfig}. Pure: the host facts come in
 * as an argument, so every profile and device can be checked arg by arg in unit tests.
 *
 * @module
 */
import path from 'node:path';
import { InvalidArgumentError } from '../../errors.js';
import { checkVmConfig, isVhostUser, MAX_KERNEL_CMDLINE, socketPath } from '../config.js';
import { tscKhz as checkTscKhz, type HostFacts } from '../host.js';
import type { MachineProfile, MemoryConfig, VmConfig, VmDevice } from '../hypervisor.js';
import { optionString, optionValue, type OptionList } from './options.js';

/** The seccomp policy vmpod starts QEMU with. */
export const QEMU_SANDBOX = 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny';
/**
 * The policy with `-runas`: QEMU installs its filter before it drops to the user, so the filter
 * must let it call setuid/setgid once (`elevateprivileges=deny` kills it with SIGSYS, measured
 * with QEMU 7.2). Once real, effective and saved ids are all the user's, it cannot regain root.
 */
export const QEMU_SANDBOX_RUNAS = 'on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny';

/** First PCI slot of the root complex used by root ports (rpN sits at slot 0x10 + N). */
export const ROOT_PORT_FIRST_SLOT = 0x10;

/** Name of the QMP socket `i` inside a VM's run directory. */
export function qmpSocketName(i: number): string {
  return i === 0 ? 'qmp.sock' : `qmp-${i}.sock`;
}

/** How QEMU is to be run, besides the VM config. */
export interface QemuContext {
  readonly host: HostFacts;
  /** Default: `kvm` when the host has it, else `tcg`. */
  readonly accel?: 'kvm' | 'tcg';
  /** QEMU's seccomp filter (`-sandbox`); default true. */
  readonly seccomp?: boolean;
  /** Number of QMP monitors, each on its own socket and serving one client at a time (default 3). */
  readonly monitors?: number;
}

/** The generated command line and what goes with it. */
export interface QemuCommandLine {
  /** Arguments after the binary. */
  readonly args: readonly string[];
  /** Host fds the child must inherit: `fds[i]` becomes fd `3 + i` in QEMU. */
  readonly fds: readonly number[];
  /** The QMP sockets QEMU listens on, one per monitor. */
  readonly qmpSockets: readonly string[];
  /** Unix sockets QEMU listens on for devices (serial ports, vhost-user in server mode). */
  readonly sockets: readonly string[];
  /** Root port ids, in order (q35). */
  readonly rootPorts: readonly string[];
  readonly accel: 'kvm' | 'tcg';
}

/** Kernel arguments vmpod always passes, before the caller's. */
export function baseKernelArgs(machine: MachineProfile, tscKhz: number | undefined): string[] {
  // panic=-1 with -no-reboot: a guest whose init dies ends the VM instead of hanging.
  const args = ['console=ttyS0', 'quiet', 'panic=-1'];
  if (machine === 'microvm') {
    // Without it about half the boots hang in calibrate_delay (microvm has no PIT calibration source).
    if (tscKhz === undefined) {
      throw new InvalidArgumentError('tscKhz', 'microvm needs the host TSC frequency (tsc_early_khz=), which could not be read: pass it explicitly');
    }
    args.push(`tsc_early_khz=${checkTscKhz(tscKhz)}`);
  }
  return args;
}

function memoryArgs(memory: MemoryConfig): { args: string[]; backendId: string | undefined } {
  const size = `${memory.sizeMiB}M`;
  const backend = memory.backend ?? { kind: 'anonymous' };
  const share = memory.shared ?? backend.kind !== 'anonymous';
  const prealloc = memory.prealloc === true ? true : undefined;
  switch (backend.kind) {
    case 'anonymous':
      if (prealloc === undefined) return { args: ['-m', size], backendId: undefined };
      return {
        args: ['-m', size, '-object', optionString('memory-backend-ram', [['id', 'mem0'], ['size', size], ['prealloc', true]], 'memory')],
        backendId: 'mem0',
      };
    case 'memfd':
      return {
        args: [
          '-m',
          size,
          '-object',
          optionString(
            'memory-backend-memfd',
            [
              ['id', 'mem0'],
              ['size', size],
              ['share', share],
              ['hugetlb', backend.hugepageSizeKiB === undefined ? undefined : true],
              ['hugetlbsize', backend.hugepageSizeKiB === undefined ? undefined : `${backend.hugepageSizeKiB}K`],
              ['prealloc', prealloc],
            ],
            'memory',
          ),
        ],
        backendId: 'mem0',
      };
    case 'file':
      return {
        args: [
          '-m',
          size,
          '-object',
          optionString(
            'memory-backend-file',
            [
              ['id', 'mem0'],
              ['size', size],
              ['mem-path', backend.path],
              ['share', share],
              ['prealloc', prealloc],
            ],
            'memory',
          ),
        ],
        backendId: 'mem0',
      };
  }
}

/** QEMU device model names per transport. */
function model(machine: MachineProfile, base: 'virtio-serial' | 'virtio-net' | 'vhost-user-fs' | 'virtio-blk'): string {
  return machine === 'microvm' ? `${base}-device` : `${base}-pci`;
}

/** Builds the `-chardev/-netdev/-blockdev/-device` arguments of one device. */
class DeviceWriter {
  readonly args: string[] = [];
  readonly fds: number[] = [];
  readonly sockets: string[] = [];

  constructor(
    private readonly machine: MachineProfile,
    private readonly accel: 'kvm' | 'tcg',
    private readonly host: HostFacts,
  ) {}

  add(device: VmDevice, field: string, bus: string | undefined): void {
    const common: OptionList = [
      ['id', device.id],
      ['bus', bus],
    ];
    switch (device.kind) {
      case 'virtio-serial': {
        this.args.push('-device', optionString(model(this.machine, 'virtio-serial'), common, field));
        device.ports.forEach((port, i) => {
          const chardev = `chr-${device.id}-${i}`;
          this.sockets.push(port.socket);
          this.args.push(
            '-chardev',
            optionString('socket', [['id', chardev], ['path', port.socket], ['server', true], ['wait', false]], `${field}.ports[${i}]`),
            '-device',
            optionString(
              'virtserialport',
              [['bus', `${device.id}.0`], ['nr', i + 1], ['chardev', chardev], ['name', port.name]],
              `${field}.ports[${i}]`,
            ),
          );
        });
        return;
      }
      case 'virtio-net': {
        const netdev = `net-${device.id}`;
        let queues: number;
        const vhost = device.vhost === true;
        if (vhost && !this.host.vhostNet) {
          throw new InvalidArgumentError(`${field}.vhost`, 'this host has no /dev/vhost-net (QEMU would abort): leave vhost off');
        }
        if ('ifname' in device.tap) {
          queues = device.tap.queues ?? 1;
          this.args.push(
            '-netdev',
            optionString(
              'tap',
              [
                ['id', netdev],
                ['ifname', device.tap.ifname],
                ['script', 'no'],
                ['downscript', 'no'],
                ['queues', queues > 1 ? queues : undefined],
                ['vhost', vhost],
              ],
              `${field}.tap`,
            ),
          );
        } else {
          queues = device.tap.fds.length;
          const childFds = device.tap.fds.map((fd) => 3 + this.fds.push(fd) - 1);
          this.args.push(
            '-netdev',
            optionString(
              'tap',
              [
                ['id', netdev],
                [queues > 1 ? 'fds' : 'fd', childFds.join(':')],
                ['vhost', vhost],
              ],
              `${field}.tap`,
            ),
          );
        }
        this.args.push('-device', optionString(model(this.machine, 'virtio-net'), [...common, ...this.nicOptions(netdev, device, queues, false)], field));
        return;
      }
      case 'vhost-user-net': {
        const chardev = `chr-${device.id}`;
        const netdev = `net-${device.id}`;
        const queues = device.queues ?? 1;
        const server = device.mode === 'server';
        if (server) this.sockets.push(device.socket);
        this.args.push(
          '-chardev',
          optionString('socket', [['id', chardev], ['path', device.socket], ['server', server ? true : undefined], ['wait', server ? false : undefined]], field),
          '-netdev',
          optionString('vhost-user', [['id', netdev], ['chardev', chardev], ['queues', queues > 1 ? queues : undefined]], field),
          '-device',
          optionString(model(this.machine, 'virtio-net'), [...common, ...this.nicOptions(netdev, device, queues, true)], field),
        );
        return;
      }
      case 'vhost-user-fs': {
        const chardev = `chr-${device.id}`;
        this.args.push(
          '-chardev',
          optionString('socket', [['id', chardev], ['path', device.socket]], field),
          '-device',
          optionString(model(this.machine, 'vhost-user-fs'), [...common, ['chardev', chardev], ['tag', device.tag], ['queue-size', device.queueSize]], field),
        );
        return;
      }
      case 'virtio-blk': {
        const readOnly = device.readOnly === true ? true : undefined;
        this.args.push(
          '-blockdev',
          optionString(
            `driver=${blockDriver(device.path)}`,
            [['node-name', `file-${device.id}`], ['filename', device.path], ['read-only', readOnly]],
            field,
          ),
          '-blockdev',
          optionString(
            `driver=${device.format ?? 'raw'}`,
            [['node-name', `blk-${device.id}`], ['file', `file-${device.id}`], ['read-only', readOnly]],
            field,
          ),
          '-device',
          optionString(model(this.machine, 'virtio-blk'), [...common, ['drive', `blk-${device.id}`], ['serial', device.serial]], field),
        );
        return;
      }
      case 'virtio-9p':
        this.args.push(
          '-fsdev',
          optionString(
            'local',
            [['id', `fsdev-${device.id}`], ['path', device.path], ['security_model', device.securityModel ?? 'none'], ['readonly', device.readOnly === true ? true : undefined]],
            field,
          ),
          '-device',
          optionString(this.machine === 'microvm' ? 'virtio-9p-device' : 'virtio-9p-pci', [...common, ['fsdev', `fsdev-${device.id}`], ['mount_tag', device.tag]], field),
        );
        return;
      case 'vsock':
        if (this.host.vhostVsock !== true) {
          throw new InvalidArgumentError(`${field}`, 'this host has no /dev/vhost-vsock: use a virtio-serial channel instead');
        }
        this.args.push('-device', optionString(this.machine === 'microvm' ? 'vhost-vsock-device' : 'vhost-vsock-pci', [...common, ['guest-cid', device.cid]], field));
        return;
      case 'vfio-pci':
        this.args.push('-device', optionString('vfio-pci', [...common, ['host', device.host]], field));
        return;
    }
  }

  /** virtio-net device options; vhost-user under TCG needs vectors=0 (QEMU 7.2 segfaults with MSI-X). */
  private nicOptions(netdev: string, device: { mac?: string; mtu?: number }, queues: number, vhostUser: boolean): OptionList {
    const pci = this.machine !== 'microvm';
    let vectors: number | undefined;
    if (pci && vhostUser && this.accel === 'tcg') vectors = 0;
    else if (pci && queues > 1) vectors = 2 * queues + 2;
    return [
      ['netdev', netdev],
      ['mac', device.mac],
      ['host_mtu', device.mtu],
      ['mq', queues > 1 ? true : undefined],
      ['vectors', vectors],
      // No option ROM: nothing boots from the network, and loading it costs time under TCG.
      ['romfile', pci ? '' : undefined],
    ];
  }
}

/**
 * `host_device` for block devices under /dev, `file` for image files and for fds passed with
 * QMP `add-fd` (`/dev/fdset/N`).
 */
export function blockDriver(file: string): 'file' | 'host_device' {
  return file.startsWith('/dev/') && !file.startsWith('/dev/fdset/') ? 'host_device' : 'file';
}

/** The root port ids a q35 VM gets: one per `rootPort` device, then `hotplugPorts` free ones. */
export function rootPortIds(config: VmConfig): string[] {
  if ((config.machine ?? 'q35') !== 'q35') return [];
  const count = (config.devices ?? []).filter((d) => d.rootPort === true).length + (config.hotplugPorts ?? 4);
  return Array.from({ length: count }, (_, i) => `rp${i}`);
}

/** The guest PCI path (`SS/00`) of the device on root port `rpN`. */
export function rootPortPciPath(port: string): string {
  const n = Number(port.slice(2));
  return `${(ROOT_PORT_FIRST_SLOT + n).toString(16).padStart(2, '0')}/00`;
}

/**
 * Generates the command line for `config`. Equivalent, for a q35 VM with one virtio-serial
 * port, of:
 * ```
 * qemu-system-x86_64 -name ID -machine q35 -accel tcg -cpu max -smp 1 -m 256M \
 *   -nodefaults -no-user-config -nographic -no-reboot -sandbox on,obsolete=deny,... \
 *   -chardev socket,id=qmp0,path=RUN/qmp.sock,server=on,wait=off -mon chardev=qmp0,mode=control \
 *   -chardev file,id=console,path=LOG,append=on -serial chardev:console \
 *   -kernel vmlinux -initrd initramfs.cpio -append "console=ttyS0 quiet panic=-1 ..." \
 *   -device pcie-root-port,id=rp0,bus=pcie.0,chassis=1,addr=0x10 ... \
 *   -device virtio-serial-pci,id=vs0 -chardev socket,id=chr-vs0-0,path=SOCK,server=on,wait=off \
 *   -device virtserialport,bus=vs0.0,nr=1,chardev=chr-vs0-0,name=agent
 * ```
 */
export function buildQemuCommandLine(config: VmConfig, context: QemuContext): QemuCommandLine {
  checkVmConfig(config);
  const machine = config.machine ?? 'q35';
  const accel = context.accel ?? (context.host.kvm ? 'kvm' : 'tcg');
  if (accel === 'kvm' && !context.host.kvm) throw new InvalidArgumentError('accel', 'KVM was asked for but /dev/kvm cannot be opened');
  const devices = config.devices ?? [];
  const monitors = context.monitors ?? 3;
  if (!Number.isInteger(monitors) || monitors < 1 || monitors > 8) throw new InvalidArgumentError('monitors', 'must be 1 to 8');
  const qmpSockets = Array.from({ length: monitors }, (_, i) => socketPath(path.join(config.runDir, qmpSocketName(i)), 'runDir'));

  const memory = memoryArgs(config.memory);
  const machineOptions: OptionList =
    machine === 'microvm'
      ? [
          ['x-option-roms', false],
          ['isa-serial', true],
          // Keep RTC and ACPI on: Debian kernels find virtio-mmio devices through ACPI.
          ['rtc', true],
          ['acpi', true],
          ['memory-backend', memory.backendId],
          ['mem-merge', config.memory.merge],
        ]
      : [
          ['memory-backend', memory.backendId],
          ['mem-merge', config.memory.merge],
        ];
  const kernelArgs = [...baseKernelArgs(machine, context.host.tscKhz), ...(config.kernelArgs ?? [])].join(' ');
  if (kernelArgs.length > MAX_KERNEL_CMDLINE) {
    throw new InvalidArgumentError('kernelArgs', `the kernel command line is ${kernelArgs.length} bytes, more than ${MAX_KERNEL_CMDLINE}`);
  }

  const args: string[] = [
    '-name',
    optionValue(config.id, 'id'),
    '-machine',
    optionString(machine, machineOptions, 'machine'),
    '-accel',
    accel,
    '-cpu',
    accel === 'kvm' ? 'host' : 'max',
    '-smp',
    String(config.cpus),
    ...memory.args,
    '-nodefaults',
    '-no-user-config',
    '-nographic',
    // A guest reboot ends the VM (the sandbox restarts it if it wants to).
    '-no-reboot',
  ];
  if (context.seccomp !== false) args.push('-sandbox', config.runAs ? QEMU_SANDBOX_RUNAS : QEMU_SANDBOX);
  if (config.runAs) args.push('-runas', `${config.runAs.uid}:${config.runAs.gid}`);
  if (machine === 'microvm' && devices.some(isVhostUser)) {
    // virtio-mmio starts in legacy mode; vhost-user devices need virtio 1.0.
    args.push('-global', 'virtio-mmio.force-legacy=false');
  }
  qmpSockets.forEach((socket, i) => {
    args.push(
      '-chardev',
      optionString('socket', [['id', `qmp${i}`], ['path', socket], ['server', true], ['wait', false]], 'runDir'),
      '-mon',
      `chardev=qmp${i},mode=control`,
    );
  });
  args.push(
    '-chardev',
    // With `output` QEMU's stdout is a pipe to a log writer: the console goes there too.
    config.output === undefined
      ? optionString('file', [['id', 'console'], ['path', config.consoleLog], ['append', true]], 'consoleLog')
      : 'stdio,id=console,signal=off',
    '-serial',
    'chardev:console',
    '-kernel',
    config.kernel,
  );
  if (config.initramfs !== undefined) args.push('-initrd', config.initramfs);
  args.push('-append', kernelArgs);

  const rootPorts = rootPortIds(config);
  rootPorts.forEach((id, i) => {
    args.push(
      '-device',
      optionString(
        'pcie-root-port',
        [
          ['id', id],
          ['bus', 'pcie.0'],
          ['chassis', i + 1],
          ['addr', `0x${(ROOT_PORT_FIRST_SLOT + i).toString(16)}`],
        ],
        'rootPorts',
      ),
    );
  });

  const writer = new DeviceWriter(machine, accel, context.host);
  let nextPort = 0;
  devices.forEach((device, i) => {
    const bus = device.rootPort === true ? rootPorts[nextPort++] : undefined;
    writer.add(device, `devices[${i}]`, bus);
  });
  args.push(...writer.args);

  return { args, fds: writer.fds, qmpSockets, sockets: writer.sockets, rootPorts, accel };
}
