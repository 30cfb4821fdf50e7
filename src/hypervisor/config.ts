/**
 * Validation of a {@link VmConfig}: every id, path, address and number is checked before
 * anything is spawned, and rejected with an {@link InvalidArgumentError} naming the field.
 *
 * @module
 */
import { InvalidArgumentError } from '../errors.js';
import * as validate from '../validate.js';
import type { MemoryBackend, VmConfig, VmDevice } from './hypervisor.js';

/** sun_path is 108 bytes with its NUL. */
export const MAX_SOCKET_PATH = 107;
/** The x86 kernel's COMMAND_LINE_SIZE, with its NUL. */
export const MAX_KERNEL_CMDLINE = 2047;
/** One root port per slot 0x10-0x1e of the q35 root complex. */
export const MAX_ROOT_PORTS = 15;

const DEVICE_ID = /^[A-Za-z][A-Za-z0-9_.-]{0,31}$/u;
/** Ids vmpod itself gives to QEMU objects in the device namespace. */
const RESERVED_ID = /^rp\d+$/u;

/** A device id (QEMU's `id_wellformed()`, shorter). */
export function deviceId(value: unknown, field: string): string {
  if (typeof value !== 'string' || !DEVICE_ID.test(value) || RESERVED_ID.test(value)) {
    throw new InvalidArgumentError(
      field,
      `${JSON.stringify(value)} is not a device id: a letter, then up to 31 letters, digits, '-', '_' or '.' (rpN is reserved)`,
    );
  }
  return value;
}

/** An absolute path that QEMU opens; ',' is refused where QEMU would split on it (-kernel, -initrd). */
export function filePath(value: unknown, field: string, allowComma = true): string {
  const p = validate.absolutePath(value, field);
  if (/[\x00-\x1f\x7f]/u.test(p)) throw new InvalidArgumentError(field, `${JSON.stringify(p)} contains control characters`);
  if (!allowComma && p.includes(',')) throw new InvalidArgumentError(field, `${JSON.stringify(p)} contains ',', which QEMU cannot take here`);
  return p;
}

/** A unix socket path: absolute and short enough for sun_path. */
export function socketPath(value: unknown, field: string): string {
  const p = filePath(value, field);
  if (Buffer.byteLength(p) > MAX_SOCKET_PATH) {
    throw new InvalidArgumentError(field, `socket path ${p} is longer than ${MAX_SOCKET_PATH} bytes (the limit of sun_path)`);
  }
  return p;
}

/** A kernel argument: printable ASCII without spaces or quotes. */
export function kernelArg(value: unknown, field: string): string {
  if (typeof value !== 'string' || !/^[\x21-\x7e]+$/u.test(value) || value.includes('"')) {
    throw new InvalidArgumentError(field, `${JSON.stringify(value)} is not a kernel argument (printable ASCII, no spaces or quotes)`);
  }
  return value;
}

function name(value: unknown, field: string, pattern: RegExp, what: string): string {
  if (typeof value !== 'string' || !pattern.test(value)) throw new InvalidArgumentError(field, `${JSON.stringify(value)} is not ${what}`);
  return value;
}

function checkBackend(backend: MemoryBackend, field: string): void {
  switch (backend.kind) {
    case 'anonymous':
      return;
    case 'memfd':
      if (backend.hugepageSizeKiB !== undefined && backend.hugepageSizeKiB !== 2048 && backend.hugepageSizeKiB !== 1048576) {
        throw new InvalidArgumentError(`${field}.hugepageSizeKiB`, 'must be 2048 (2 MiB) or 1048576 (1 GiB)');
      }
      return;
    case 'file':
      filePath(backend.path, `${field}.path`);
      return;
    default:
      throw new InvalidArgumentError(`${field}.kind`, `unknown memory backend ${JSON.stringify((backend as { kind: unknown }).kind)}`);
  }
}

/** True when the device's data plane runs in another process that maps guest RAM. */
export function isVhostUser(device: VmDevice): boolean {
  return device.kind === 'vhost-user-fs' || device.kind === 'vhost-user-net';
}

/** Checks one device; `field` is its path in the config, e.g. `devices[2]`. */
export function checkDevice(device: VmDevice, field: string): void {
  deviceId(device.id, `${field}.id`);
  if (device.rootPort !== undefined && typeof device.rootPort !== 'boolean') {
    throw new InvalidArgumentError(`${field}.rootPort`, 'must be a boolean');
  }
  switch (device.kind) {
    case 'virtio-serial':
      if (!Array.isArray(device.ports) || device.ports.length === 0 || device.ports.length > 30) {
        throw new InvalidArgumentError(`${field}.ports`, 'needs 1 to 30 ports');
      }
      device.ports.forEach((port, i) => {
        name(port.name, `${field}.ports[${i}].name`, /^[A-Za-z0-9_.-]{1,64}$/u, 'a port name (1-64 of [A-Za-z0-9_.-])');
        socketPath(port.socket, `${field}.ports[${i}].socket`);
      });
      if (new Set(device.ports.map((p) => p.name)).size !== device.ports.length) {
        throw new InvalidArgumentError(`${field}.ports`, 'port names must be unique');
      }
      return;
    case 'virtio-net':
      if ('ifname' in device.tap) {
        validate.interfaceName(device.tap.ifname, `${field}.tap.ifname`);
        if (device.tap.queues !== undefined) validate.integer(device.tap.queues, `${field}.tap.queues`, 1, 64);
      } else if ('fds' in device.tap && Array.isArray(device.tap.fds) && device.tap.fds.length >= 1 && device.tap.fds.length <= 64) {
        device.tap.fds.forEach((fd, i) => validate.integer(fd, `${field}.tap.fds[${i}]`, 0, 0x7fffffff));
      } else {
        throw new InvalidArgumentError(`${field}.tap`, 'needs { ifname } or { fds: [1 to 64 fds] }');
      }
      if (device.mac !== undefined) validate.macAddress(device.mac, `${field}.mac`);
      if (device.mtu !== undefined) validate.integer(device.mtu, `${field}.mtu`, 68, 65535);
      return;
    case 'vhost-user-net':
      socketPath(device.socket, `${field}.socket`);
      if (device.mode !== 'client' && device.mode !== 'server') throw new InvalidArgumentError(`${field}.mode`, 'must be "client" or "server"');
      if (device.mac !== undefined) validate.macAddress(device.mac, `${field}.mac`);
      if (device.queues !== undefined) validate.integer(device.queues, `${field}.queues`, 1, 64);
      if (device.mtu !== undefined) validate.integer(device.mtu, `${field}.mtu`, 68, 65535);
      return;
    case 'vhost-user-fs':
      socketPath(device.socket, `${field}.socket`);
      name(device.tag, `${field}.tag`, /^[A-Za-z0-9_.-]{1,36}$/u, 'a virtio-fs tag (1-36 of [A-Za-z0-9_.-])');
      if (device.queueSize !== undefined) {
        validate.integer(device.queueSize, `${field}.queueSize`, 16, 1024);
        if ((device.queueSize & (device.queueSize - 1)) !== 0) throw new InvalidArgumentError(`${field}.queueSize`, 'must be a power of two');
      }
      return;
    case 'virtio-blk':
      filePath(device.path, `${field}.path`);
      if (device.format !== undefined && device.format !== 'raw' && device.format !== 'qcow2') {
        throw new InvalidArgumentError(`${field}.format`, 'must be "raw" or "qcow2"');
      }
      if (device.serial !== undefined) name(device.serial, `${field}.serial`, /^[A-Za-z0-9_.-]{1,20}$/u, 'a disk serial (1-20 of [A-Za-z0-9_.-])');
      return;
    case 'virtio-9p':
      filePath(device.path, `${field}.path`);
      name(device.tag, `${field}.tag`, /^[A-Za-z0-9_.-]{1,31}$/u, 'a 9p mount tag (1-31 of [A-Za-z0-9_.-])');
      if (device.securityModel !== undefined && !['passthrough', 'mapped-xattr', 'none'].includes(device.securityModel)) {
        throw new InvalidArgumentError(`${field}.securityModel`, 'must be "passthrough", "mapped-xattr" or "none"');
      }
      return;
    case 'vsock':
      validate.integer(device.cid, `${field}.cid`, 3, 0xfffffffe);
      return;
    case 'vfio-pci':
      validate.pciAddress(device.host, `${field}.host`);
      return;
    default:
      throw new InvalidArgumentError(`${field}.kind`, `unknown device kind ${JSON.stringify((device as { kind: unknown }).kind)}`);
  }
}

/** Checks an unprivileged user to run as: uid and gid integers above 0 (root is what it drops). */
export function runAsUser(value: unknown, field: string): { uid: number; gid: number } {
  if (typeof value !== 'object' || value === null) throw new InvalidArgumentError(field, 'must be { uid, gid }');
  const v = value as Record<string, unknown>;
  for (const key of Object.keys(v)) if (key !== 'uid' && key !== 'gid') throw new InvalidArgumentError(`${field}.${key}`, 'unknown field');
  return { uid: validate.integer(v['uid'], `${field}.uid`, 1, 2 ** 32 - 2), gid: validate.integer(v['gid'], `${field}.gid`, 1, 2 ** 32 - 2) };
}

/** Checks a whole VM config; throws on the first problem. */
export function checkVmConfig(config: VmConfig): void {
  validate.id(config.id, 'id');
  const machine = config.machine ?? 'q35';
  if (machine !== 'q35' && machine !== 'microvm') throw new InvalidArgumentError('machine', 'must be "q35" or "microvm"');
  validate.integer(config.cpus, 'cpus', 1, 255);
  validate.integer(config.memory.sizeMiB, 'memory.sizeMiB', 64, 4 * 1024 * 1024);
  const backend = config.memory.backend ?? { kind: 'anonymous' };
  checkBackend(backend, 'memory.backend');
  if (config.memory.merge !== undefined && typeof config.memory.merge !== 'boolean') {
    throw new InvalidArgumentError('memory.merge', 'must be a boolean');
  }
  if (backend.kind === 'memfd' && backend.hugepageSizeKiB !== undefined && (config.memory.sizeMiB * 1024) % backend.hugepageSizeKiB !== 0) {
    throw new InvalidArgumentError('memory.sizeMiB', `must be a multiple of the hugepage size (${backend.hugepageSizeKiB} KiB)`);
  }
  filePath(config.kernel, 'kernel', false);
  if (config.initramfs !== undefined) filePath(config.initramfs, 'initramfs', false);
  (config.kernelArgs ?? []).forEach((arg, i) => kernelArg(arg, `kernelArgs[${i}]`));
  filePath(config.consoleLog, 'consoleLog');
  filePath(config.runDir, 'runDir');
  if (config.hotplugPorts !== undefined) validate.integer(config.hotplugPorts, 'hotplugPorts', 0, MAX_ROOT_PORTS);
  if (config.runAs !== undefined) runAsUser(config.runAs, 'runAs');

  const devices = config.devices ?? [];
  const ids = new Set<string>();
  devices.forEach((device, i) => {
    checkDevice(device, `devices[${i}]`);
    if (ids.has(device.id)) throw new InvalidArgumentError(`devices[${i}].id`, `duplicate device id "${device.id}"`);
    ids.add(device.id);
    if (machine === 'microvm' && device.kind === 'vfio-pci') {
      throw new InvalidArgumentError(`devices[${i}]`, 'microvm has no PCI bus: vfio-pci needs machine "q35"');
    }
    if (machine === 'microvm' && device.rootPort === true) {
      throw new InvalidArgumentError(`devices[${i}].rootPort`, 'microvm has no PCIe root ports');
    }
  });
  const sockets = devices.flatMap((d) =>
    d.kind === 'virtio-serial' ? d.ports.map((p) => p.socket) : d.kind === 'vhost-user-fs' || d.kind === 'vhost-user-net' ? [d.socket] : [],
  );
  if (new Set(sockets).size !== sockets.length) throw new InvalidArgumentError('devices', 'two devices use the same socket path');
  const shared = config.memory.shared ?? backend.kind !== 'anonymous';
  const vhost = devices.find(isVhostUser);
  if (vhost !== undefined && (backend.kind === 'anonymous' || !shared)) {
    throw new InvalidArgumentError(
      'memory.backend',
      `device "${vhost.id}" (${vhost.kind}) runs its data plane in another process, which must map guest RAM: use a memfd or file backend with shared: true`,
    );
  }
  if (backend.kind === 'anonymous' && config.memory.shared === true) {
    throw new InvalidArgumentError('memory.shared', 'anonymous memory cannot be shared: use a memfd or file backend');
  }
  if (machine === 'q35') {
    const ports = devices.filter((d) => d.rootPort === true).length + (config.hotplugPorts ?? 4);
    if (ports > MAX_ROOT_PORTS) throw new InvalidArgumentError('hotplugPorts', `q35 has room for ${MAX_ROOT_PORTS} root ports, this config needs ${ports}`);
  }
}
