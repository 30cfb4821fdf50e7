/**
 * Errors of the hypervisor layer: a VM that would not start or is gone, and QMP failures.
 *
 * @module
 */
import { VmpodError, type VmpodErrorOptions } from '../errors.js';

/** The hypervisor process failed to start; the message carries the end of its log. */
export class VmStartError extends VmpodError {
  constructor(
    readonly vmId: string,
    message: string,
    readonly logTail: string,
    options: VmpodErrorOptions = {},
  ) {
    super('ERR_VMPOD_VM_START', `vm "${vmId}": ${message}${logTail ? `\n--- log ---\n${logTail}` : ''}`, options);
  }
}

/** An operation needs a running VM, but its hypervisor process is gone. */
export class VmExitedError extends VmpodError {
  constructor(
    readonly vmId: string,
    detail: string,
    options: VmpodErrorOptions = {},
  ) {
    super('ERR_VMPOD_VM_EXITED', `vm "${vmId}" is not running (${detail})`, options);
  }
}

/** QEMU answered a QMP command with an error (`{"error": {"class", "desc"}}`). */
export class QmpError extends VmpodError {
  constructor(
    readonly command: string,
    /** QMP error class, e.g. `GenericError`, `DeviceNotFound`, `CommandNotFound`. */
    readonly qmpClass: string,
    /** QEMU's human-readable description. */
    readonly desc: string,
    options: VmpodErrorOptions = {},
  ) {
    super('ERR_VMPOD_QMP', `QMP ${command}: ${qmpClass}: ${desc}`, options);
  }
}

/** The QMP peer broke the protocol (invalid JSON, an oversized line, an unexpected message) or went away. */
export class QmpProtocolError extends VmpodError {
  constructor(message: string, options: VmpodErrorOptions = {}) {
    super('ERR_VMPOD_QMP_PROTOCOL', `QMP: ${message}`, options);
  }
}

/** A daemon the VM needs (virtiofsd) failed to start or stopped. */
export class DaemonError extends VmpodError {
  constructor(
    readonly daemon: string,
    message: string,
    readonly logTail: string,
    options: VmpodErrorOptions = {},
  ) {
    super('ERR_VMPOD_DAEMON', `${daemon}: ${message}${logTail ? `\n--- log ---\n${logTail}` : ''}`, options);
  }
}
