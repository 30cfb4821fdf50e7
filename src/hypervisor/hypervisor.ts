/**
 * The `Hypervisor` interface every VM backend implements (QEMU today, see `qemu/`), and the
 * typed VM configuration it takes. The configuration names what the guest gets (vCPUs, memory,
 * kernel, devices); each backend turns it into its own command line or API calls.
 *
 * @module
 */
import type { EventEmitter } from 'eventemitter3';
import type { CallOptions } from '../options.js';

/**
 * The machine model.
 * - `q35`: PCIe with root ports, so devices can be hot plugged (the default).
 * - `microvm`: no PCI, virtio-mmio devices, no hotplug; starts a little faster.
 */
export type MachineProfile = 'q35' | 'microvm';

/**
 * Where guest RAM comes from.
 * - `anonymous`: private memory (`-m`), the cheapest; not usable with vhost-user devices.
 * - `memfd`: a memfd, optionally on hugepages (`-object memory-backend-memfd`).
 * - `file`: a file or directory on hugetlbfs (`-object memory-backend-file,mem-path=`).
 */
export type MemoryBackend =
  | { readonly kind: 'anonymous' }
  | { readonly kind: 'memfd'; readonly hugepageSizeKiB?: number }
  | { readonly kind: 'file'; readonly path: string };

/** Guest RAM. */
export interface MemoryConfig {
  readonly sizeMiB: number;
  /** Default `anonymous`. */
  readonly backend?: MemoryBackend;
  /** Map the RAM shared (`share=on`); vhost-user devices (virtio-fs, vhost-user-net) need it. Default true for memfd/file. */
  readonly shared?: boolean;
  /** Fault all RAM in at start (`prealloc=on`), e.g. to claim hugepages up front. */
  readonly prealloc?: boolean;
  /**
   * Mark guest RAM mergeable by KSM (`-machine mem-merge=on`, `madvise(MADV_MERGEABLE)`) or
   * keep it out of KSM (`mem-merge=off`). Default: QEMU's (on). KSM only merges private
   * anonymous pages: shared (memfd/file) RAM is never merged.
   */
  readonly merge?: boolean;
}

/** Fields common to all devices. */
export interface DeviceBase {
  /** Device id, unique in the VM: a letter, then letters, digits, `-`, `_`, `.` (max 32). */
  readonly id: string;
  /**
   * q35: place the device on a PCIe root port of its own, so that it can be unplugged later
   * (and the guest sees it behind a port, as a hot-plugged one). Default: on the root complex.
   */
  readonly rootPort?: boolean;
}

/** A virtio-serial controller with named ports, each bound to a host unix socket the VM listens on. */
export interface VirtioSerialDevice extends DeviceBase {
  readonly kind: 'virtio-serial';
  /** Guest side: `/sys/class/virtio-ports/vportNpM/name` holds `name`. */
  readonly ports: readonly { readonly name: string; readonly socket: string }[];
}

/** A virtio-net NIC on a host tap: opened by the hypervisor by name, or fds the caller opened (one per queue). */
export interface VirtioNetDevice extends DeviceBase {
  readonly kind: 'virtio-net';
  readonly tap: { readonly ifname: string; readonly queues?: number } | { readonly fds: readonly number[] };
  readonly mac?: string;
  /** MTU the guest driver is told (`host_mtu`). */
  readonly mtu?: number;
  /** Use vhost-net (needs /dev/vhost-net; refused when the host lacks it). Default false. */
  readonly vhost?: boolean;
}

/** A virtio-net NIC whose data plane is a vhost-user backend (DPDK testpmd, OVS-DPDK, VPP). */
export interface VhostUserNetDevice extends DeviceBase {
  readonly kind: 'vhost-user-net';
  readonly socket: string;
  /** `client`: the backend listens and the VM connects; `server`: the VM listens (and waits for the backend at start). */
  readonly mode: 'client' | 'server';
  readonly mac?: string;
  readonly queues?: number;
  readonly mtu?: number;
}

/** A virtio-fs share served by a virtiofsd on `socket`; the guest mounts it by `tag`. */
export interface VhostUserFsDevice extends DeviceBase {
  readonly kind: 'vhost-user-fs';
  readonly socket: string;
  /** Mount tag (max 36 bytes): `mount -t virtiofs TAG /mnt`. */
  readonly tag: string;
  readonly queueSize?: number;
}

/** A virtio-blk disk from a raw or qcow2 file, or a host block device. */
export interface VirtioBlkDevice extends DeviceBase {
  readonly kind: 'virtio-blk';
  readonly path: string;
  /** Default `raw`. */
  readonly format?: 'raw' | 'qcow2';
  readonly readOnly?: boolean;
  /** Guest-visible serial (`/dev/disk/by-id/virtio-SERIAL`), max 20 characters. */
  readonly serial?: string;
}

/**
 * A host directory shared over 9p (virtio-9p): for guest kernels that have 9p (Debian's cloud
 * kernel has not; use virtio-fs there). Cold plug only.
 */
export interface Virtio9pDevice extends DeviceBase {
  readonly kind: 'virtio-9p';
  readonly path: string;
  /** Mount tag: `mount -t 9p -o trans=virtio TAG /mnt`. */
  readonly tag: string;
  readonly readOnly?: boolean;
  /** How guest ownership and modes map to host files (default `none`: like passthrough, without failing on chown). */
  readonly securityModel?: 'passthrough' | 'mapped-xattr' | 'none';
}

/** A vsock device (vhost-vsock, needs /dev/vhost-vsock: KVM hosts). */
export interface VsockDevice extends DeviceBase {
  readonly kind: 'vsock';
  /** The guest's context id, unique on the host (3 and above). */
  readonly cid: number;
}

/** A host PCI device passed through with VFIO (q35 only). */
export interface VfioPassthroughDevice extends DeviceBase {
  readonly kind: 'vfio-pci';
  /** Host PCI address, `DDDD:BB:DD.F`; the device must be bound to vfio-pci. */
  readonly host: string;
}

/** A device of the VM. */
export type VmDevice =
  | VirtioSerialDevice
  | VirtioNetDevice
  | VhostUserNetDevice
  | VhostUserFsDevice
  | VirtioBlkDevice
  | Virtio9pDevice
  | VsockDevice
  | VfioPassthroughDevice;

/** Everything a VM is started with. */
export interface VmConfig {
  /** Used in logs and process names; a vmpod id. */
  readonly id: string;
  /** Default `q35`. */
  readonly machine?: MachineProfile;
  readonly cpus: number;
  readonly memory: MemoryConfig;
  /** Kernel image (an ELF vmlinux with a PVH note, or a bzImage). */
  readonly kernel: string;
  readonly initramfs?: string;
  /** Extra kernel arguments, appended after the backend's own (`console=...`). */
  readonly kernelArgs?: readonly string[];
  readonly devices?: readonly VmDevice[];
  /** q35: number of free PCIe root ports for hotplug, besides those `rootPort` devices use (default 4). */
  readonly hotplugPorts?: number;
  /** The guest's serial console and the hypervisor's own stderr are appended here. */
  readonly consoleLog: string;
  /**
   * Where the hypervisor's output (console and stderr) goes instead of being appended to
   * `consoleLog` directly: an fd, e.g. a pipe to a writer that caps the log.
   */
  readonly output?: { readonly fd: number };
  /** A private directory for the VM's control sockets (it must exist). */
  readonly runDir: string;
  /**
   * Run the hypervisor as this unprivileged user once it has opened what it needs at start (QEMU
   * `-runas UID:GID`). Default: it stays root. See docs/security.md for what then needs care
   * (hot-plugged devices are opened by the host and passed as fds where the hypervisor allows).
   */
  readonly runAs?: { readonly uid: number; readonly gid: number };
}

/** Why a VM ended. */
export interface VmExit {
  /**
   * `shutdown`: the guest powered off or rebooted, or vmpod stopped it;
   * `unexpected`: the hypervisor died on its own (killed from outside, crashed).
   */
  readonly reason: 'shutdown' | 'unexpected';
  /** e.g. `guest-shutdown`, `host-qmp-quit`, `guest-panic`, `SIGKILL`. */
  readonly detail: string;
}

/** What `start()` persists so that another process can `attach()`. JSON-serialisable. */
export interface VmHandle {
  readonly hypervisor: string;
  readonly id: string;
  readonly pid: number;
  /** Start time of the process (clock ticks after boot, /proc/PID/stat field 22): guards against pid reuse. */
  readonly startTime: number;
  readonly machine: MachineProfile;
  /**
   * Control sockets (QMP monitors for QEMU). Each serves one client at a time, so there are
   * several: the creating process holds one, other processes attach through the others.
   */
  readonly controlSockets: readonly string[];
  readonly consoleLog: string;
  /** Unix sockets the hypervisor listens on (serial ports, ...), removed when the VM is gone. */
  readonly sockets: readonly string[];
}

/** Where a hot-plugged device landed. */
export interface HotplugResult {
  readonly id: string;
  /** q35 root port id, e.g. `rp2`. */
  readonly port: string;
  /**
   * Guest PCI path in Kata's form, slot of the root port on bus 0 then slot on the port's
   * bus, e.g. `12/00`: the agent finds the device under `/sys/bus/pci/devices/0000:00:12.0/`.
   */
  readonly pciPath: string;
}

/** Options of a call that can be cancelled and bounded (the one options type of vmpod). */
export type { CallOptions } from '../options.js';

/** Options of {@link VirtualMachine.shutdown}. */
export interface ShutdownOptions {
  /**
   * The graceful step: e.g. ask the guest agent to power off. Default: an ACPI power button
   * press (QMP `system_powerdown`), which needs a guest that handles it.
   */
  readonly graceful?: (signal: AbortSignal) => Promise<void>;
  /** How long the graceful step may take before vmpod forces the VM off (default 10 s). */
  readonly gracefulTimeoutMs?: number;
  readonly signal?: AbortSignal;
}

/** How a shutdown ended the VM. */
export interface ShutdownResult {
  readonly exit: VmExit;
  /** `graceful`: the guest went down by itself; `quit`: the hypervisor was told to quit; `kill`: SIGKILL. */
  readonly method: 'graceful' | 'quit' | 'kill';
}

/** Events of a {@link VirtualMachine}. */
export interface VmEvents {
  /** The VM is gone (emitted once). */
  exit: (exit: VmExit) => void;
  /** The guest was paused or resumed (by anyone holding the control socket). */
  paused: () => void;
  resumed: () => void;
  /** The control channel failed although the process lives on. */
  error: (error: Error) => void;
}

/** A running VM. */
export interface VirtualMachine extends EventEmitter<VmEvents> {
  readonly id: string;
  /** Persist this to attach from another process. */
  readonly handle: VmHandle;
  /** The VM's exit, once it is gone. */
  readonly exited: VmExit | undefined;
  /** Freezes the vCPUs (`stop`). */
  pause(options?: CallOptions): Promise<void>;
  /** Thaws the vCPUs (`cont`). */
  resume(options?: CallOptions): Promise<void>;
  /** `running`, `paused`, ... as the hypervisor reports it. */
  status(options?: CallOptions): Promise<string>;
  /** Graceful step, then quit, then SIGKILL: always ends with the VM gone. */
  shutdown(options?: ShutdownOptions): Promise<ShutdownResult>;
  /** SIGKILL now. */
  kill(): Promise<VmExit>;
  /** Resolves when the VM is gone. */
  waitForExit(signal?: AbortSignal): Promise<VmExit>;
  /** Adds a device to the running VM (q35). */
  hotplug(device: VmDevice, options?: CallOptions): Promise<HotplugResult>;
  /** Removes a hot-plugged (or port-placed) device and its backend, once the guest has let go of it. */
  unplug(id: string, options?: CallOptions): Promise<void>;
  /** Resolves when a console line matches (the console log is tailed from its start). */
  waitForConsole(pattern: RegExp | string, options?: CallOptions): Promise<string>;
  /** Closes this process's control connection; the VM keeps running. */
  detach(): void;
}

/** A VM whose process was just spawned: its handle, to record at once, and the wait for its control channel. */
export interface SpawnedVm {
  readonly handle: VmHandle;
  /** Resolves once the control channel is up; kills the VM when it does not come up in time. */
  ready(options?: CallOptions): Promise<VirtualMachine>;
}

/** A VM backend. */
export interface Hypervisor {
  readonly name: string;
  /** Starts a VM, detached from this process, and resolves once its control channel is up. */
  start(config: VmConfig, options?: CallOptions): Promise<VirtualMachine>;
  /** Spawns a VM and resolves at once with its handle (record it), then {@link SpawnedVm.ready} waits for it. */
  spawn(config: VmConfig, options?: CallOptions): Promise<SpawnedVm>;
  /** Takes control of a VM started by another (or an earlier) process. */
  attach(handle: VmHandle, options?: CallOptions): Promise<VirtualMachine>;
  /**
   * Ends the VM of `handle` at once from the handle alone (no control channel): whatever the VM
   * runs dies with it. Resolves once it is gone (at once if it was); rejects if it survived.
   */
  kill(handle: VmHandle): Promise<void>;
}
