/**
 * The public shapes around a {@link Sandbox}: its events, why it stopped, what `list`, `volumes`
 * and `devices` report, and the options of calls that look a sandbox up by id.
 *
 * @module
 */
import type { ExitStatus } from '../agent/messages.js';
import type { Hypervisor } from '../hypervisor/hypervisor.js';
import type { CallOptions } from '../options.js';
import type { VolumeSpec } from '../volume/spec.js';
import type { PciDeviceInfo } from './resources/pci-devices.js';
import type { VhostUserNicInfo } from './resources/vhost-user.js';
import type { SandboxState } from './state-machine.js';

/** Why a sandbox stopped. */
export interface StopInfo {
  /** `requested`: stop() or delete(); `guest`: the guest powered off; `unexpected`: the VM died. */
  reason: 'requested' | 'unexpected' | 'guest';
  /** e.g. `SIGKILL`, `guest-shutdown`; for stop(), `stop` when the guest powered off in time, else what ended it. */
  detail: string;
}

/** Events of a {@link Sandbox}. */
export interface SandboxEvents {
  /** Progress of a long step (e.g. the first guest build). */
  progress: (message: string) => void;
  /** The VM runs and its agent answered. */
  started: () => void;
  paused: () => void;
  resumed: () => void;
  /** The VM is gone, on request or not, also when another process stopped or deleted the sandbox. */
  stopped: (info: StopInfo) => void;
  /** A container's init process exited. */
  containerExit: (containerId: string, status: ExitStatus) => void;
  /** A background failure: recording that the VM died, the agent connection broken by the guest, the control channel lost. */
  error: (error: Error) => void;
}

/** @deprecated The same as {@link CallOptions}, vmpod's one options type of calls. */
export type SandboxCallOptions = CallOptions;

/** Options of {@link Sandbox.attach}, {@link Sandbox.remove} and {@link Sandbox.list}. */
export interface LookupOptions extends CallOptions {
  /** State directory root (default `/run/vmpod`, or `$VMPOD_STATE_DIR`). */
  stateDir?: string;
  /** The VM backend (default: QEMU). */
  hypervisor?: Hypervisor;
}

/** One line of {@link Sandbox.list}. */
export interface SandboxInfo {
  id: string;
  state: SandboxState;
  createdAt: string;
  /** The hypervisor's pid while the VM runs. */
  pid?: number;
  cpus: number;
  memoryMiB: number;
  machine: string;
  /** The console log (guest console and hypervisor messages; the previous part in `.1`). */
  consoleLog: string;
}

/** A volume of a sandbox. */
export interface VolumeInfo {
  spec: VolumeSpec;
  /** Where it is in the guest, once mounted. */
  guestPath?: string;
  /** Added to the running sandbox rather than from its config (forgotten at stop). */
  hotplugged: boolean;
  /** The container whose rootfs image it is. */
  container?: string;
}

/** The NFV devices of a sandbox, with their guest PCI paths. */
export interface SandboxDevices {
  vhostUser: VhostUserNicInfo[];
  pci: PciDeviceInfo[];
}

/** The public view of a volume's recorded state. */
export function volumeInfo(state: { spec: VolumeSpec; guestPath?: string; hotplugged: boolean; container?: string }): VolumeInfo {
  return {
    spec: state.spec,
    hotplugged: state.hotplugged,
    ...(state.guestPath === undefined ? {} : { guestPath: state.guestPath }),
    ...(state.container === undefined ? {} : { container: state.container }),
  };
}
