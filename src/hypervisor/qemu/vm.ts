/**
 * A running QEMU VM: its process (detached, found again by pid and start time), its QMP
 * connection, and what vmpod does with it (pause, resume, shutdown with fallbacks, hotplug,
 * exit detection).
 *
 * @module
 */
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { EventEmitter } from 'eventemitter3';
import { AbortError, InvalidArgumentError, InvalidStateError, TimeoutError } from '../../errors.js';
import * as validate from '../../validate.js';
import { waitForConsoleLine } from '../console.js';
import { VmExitedError } from '../errors.js';
import type {
  CallOptions,
  HotplugResult,
  ShutdownOptions,
  ShutdownResult,
  VirtualMachine,
  VmDevice,
  VmEvents,
  VmExit,
  VmHandle,
} from '../hypervisor.js';
import { isAlive, signalProcess, waitForProcessExit, type DetachedProcess } from '../../host/process.js';
import { hotplugDevice, unplugDevice } from './hotplug.js';
import type { QmpClient, QmpEvent } from './qmp.js';

/** How often a VM whose QMP connection is gone is checked for life. */
const WATCH_INTERVAL_MS = 250;

/** A QEMU VM. Made by {@link QemuHypervisor.start} or {@link QemuHypervisor.attach}. */
export class QemuVm extends EventEmitter<VmEvents> implements VirtualMachine {
  readonly handle: VmHandle;
  #qmp: QmpClient | undefined;
  #exit: VmExit | undefined;
  readonly #exitWaiters: ((exit: VmExit) => void)[] = [];
  /** Why the VM may go away without it being unexpected (a SHUTDOWN event, our own request). */
  #expected: string | undefined;
  #watchTimer: NodeJS.Timeout | undefined;
  readonly #kvm: boolean;

  /** @internal */
  constructor(handle: VmHandle, qmp: QmpClient, options: { kvm: boolean; child?: DetachedProcess['child'] | undefined }) {
    super();
    this.handle = handle;
    this.#kvm = options.kvm;
    this.#qmp = qmp;
    qmp.on('event', (event) => this.#onEvent(event));
    qmp.on('close', (error) => this.#onQmpClose(error));
    options.child?.once('exit', (code, signal) => {
      this.#gone(signal === null ? `exit code ${code ?? 'unknown'}` : signal);
    });
  }

  get id(): string {
    return this.handle.id;
  }

  /** The VM's exit, once it is gone. */
  get exited(): VmExit | undefined {
    return this.#exit;
  }

  /** The QMP connection, for commands this class does not wrap (undefined once detached or gone). */
  get qmp(): QmpClient | undefined {
    return this.#qmp;
  }

  async pause(options: CallOptions = {}): Promise<void> {
    await this.#execute('stop', undefined, options);
  }

  async resume(options: CallOptions = {}): Promise<void> {
    await this.#execute('cont', undefined, options);
  }

  async status(options: CallOptions = {}): Promise<string> {
    const result = await this.#execute<{ status: string }>('query-status', undefined, options);
    return result.status;
  }

  async shutdown(options: ShutdownOptions = {}): Promise<ShutdownResult> {
    if (this.#exit) return { exit: this.#exit, method: 'graceful' };
    const graceful = new AbortController();
    const onAbort = (): void => graceful.abort(options.signal?.reason);
    options.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      // 1. The graceful step: the caller's (e.g. the agent powers off), or the ACPI power button.
      //    A step that fails skips the rest of the wait.
      const step = options.graceful
        ? options.graceful(graceful.signal)
        : this.#execute('system_powerdown', undefined, { signal: graceful.signal });
      const failed = step.then(
        () => new Promise<never>(() => undefined),
        () => undefined,
      );
      const exit = await this.#exitWithin(options.gracefulTimeoutMs ?? 10_000, graceful.signal, failed);
      graceful.abort();
      if (exit) return { exit, method: 'graceful' };
      if (options.signal?.aborted) throw new AbortError('VM shutdown', { cause: options.signal.reason });
      // 2. Tell QEMU to quit.
      this.#expected = 'host-qmp-quit';
      // Only a QEMU that does not answer at all is skipped straight to SIGKILL; a connection
      // that closes under `quit` means it is going.
      const answered = await this.#execute('quit', undefined, { timeoutMs: 5000 }).then(
        () => true,
        (error: unknown) => !(error instanceof TimeoutError),
      );
      const quitExit = answered ? await this.#exitWithin(5000, undefined) : undefined;
      if (quitExit) return { exit: quitExit, method: 'quit' };
      // 3. SIGKILL.
      return { exit: await this.kill(), method: 'kill' };
    } finally {
      options.signal?.removeEventListener('abort', onAbort);
    }
  }

  async kill(): Promise<VmExit> {
    if (this.#exit) return this.#exit;
    this.#expected ??= 'SIGKILL';
    signalProcess(this.handle, 'SIGKILL');
    await waitForProcessExit(this.handle, 10_000);
    this.#gone('SIGKILL');
    return this.#exit ?? { reason: 'shutdown', detail: 'SIGKILL' };
  }

  waitForExit(signal?: AbortSignal): Promise<VmExit> {
    if (this.#exit) return Promise.resolve(this.#exit);
    return new Promise<VmExit>((resolve, reject) => {
      // The VM itself does not keep this process alive (it is detached); a waiter does.
      const keepAlive = setInterval(() => undefined, 1 << 30);
      const waiter = (exit: VmExit): void => {
        clearInterval(keepAlive);
        signal?.removeEventListener('abort', onAbort);
        resolve(exit);
      };
      const onAbort = (): void => {
        clearInterval(keepAlive);
        this.#exitWaiters.splice(this.#exitWaiters.indexOf(waiter) >>> 0, 1);
        reject(new AbortError('waiting for the VM to exit', { cause: signal?.reason }));
      };
      if (signal?.aborted) {
        onAbort();
        return;
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#exitWaiters.push(waiter);
    });
  }

  async hotplug(device: VmDevice, options: CallOptions = {}): Promise<HotplugResult> {
    if (this.handle.machine !== 'q35') throw new InvalidArgumentError('machine', `${this.handle.machine} has no hotplug: use machine "q35"`);
    return hotplugDevice(this.#control(), device, { ...options, kvm: this.#kvm });
  }

  async unplug(id: string, options: CallOptions = {}): Promise<void> {
    if (this.handle.machine !== 'q35') throw new InvalidArgumentError('machine', `${this.handle.machine} has no hotplug: use machine "q35"`);
    await unplugDevice(this.#control(), id, options);
  }

  /**
   * Passes `fd` to QEMU into an fd set (QMP `add-fd` with the fd as SCM_RIGHTS), for paths
   * `/dev/fdset/N` (e.g. a virtio-blk image opened by the caller). QEMU keeps its own copy:
   * the caller may close `fd` afterwards.
   */
  async addFd(fd: number, options: CallOptions & { fdsetId?: number; opaque?: string } = {}): Promise<{ fdsetId: number; fd: number }> {
    validate.integer(fd, 'fd', 0, 0x7fffffff);
    const args: Record<string, unknown> = {};
    if (options.fdsetId !== undefined) args['fdset-id'] = validate.integer(options.fdsetId, 'fdsetId', 0, 0x7fffffff);
    if (options.opaque !== undefined) args['opaque'] = options.opaque;
    const result = await this.#control().execute<{ 'fdset-id': number; fd: number }>('add-fd', args, {
      signal: options.signal,
      ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
      fds: [fd],
    });
    return { fdsetId: result['fdset-id'], fd: result.fd };
  }

  /** Drops an fd set passed with {@link addFd} (QMP `remove-fd`); QEMU closes it once unused. */
  async removeFdset(fdsetId: number, options: CallOptions = {}): Promise<void> {
    await this.#execute('remove-fd', { 'fdset-id': validate.integer(fdsetId, 'fdsetId', 0, 0x7fffffff) }, options);
  }

  waitForConsole(pattern: RegExp | string, options: CallOptions = {}): Promise<string> {
    return waitForConsoleLine(this.handle.consoleLog, pattern, {
      signal: options.signal,
      timeoutMs: options.timeoutMs ?? 60_000,
      abortWhen: () => (this.#exit ? new VmExitedError(this.id, this.#exit.detail) : undefined),
    });
  }

  detach(): void {
    const qmp = this.#qmp;
    this.#qmp = undefined;
    clearInterval(this.#watchTimer);
    qmp?.removeAllListeners();
    qmp?.close();
  }

  /** The QMP connection, or the reason there is none. */
  #control(): QmpClient {
    if (this.#exit) throw new VmExitedError(this.id, this.#exit.detail);
    if (!this.#qmp || this.#qmp.closed) throw new InvalidStateError(`vm "${this.id}"`, 'detached', 'controlled');
    return this.#qmp;
  }

  #execute<T>(command: string, args: Record<string, unknown> | undefined, options: CallOptions): Promise<T> {
    try {
      return this.#control().execute<T>(command, args, { signal: options.signal, ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }) });
    } catch (error) {
      return Promise.reject(error as Error);
    }
  }

  /** The exit if the VM is gone within `ms`, else undefined (also when `giveUp` settles first). */
  async #exitWithin(ms: number, signal: AbortSignal | undefined, giveUp?: Promise<void>): Promise<VmExit | undefined> {
    if (this.#exit) return this.#exit;
    const controller = new AbortController();
    const onAbort = (): void => controller.abort();
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const exit = await Promise.race([
        this.waitForExit(controller.signal).catch(() => undefined),
        sleep(ms, undefined, { signal: controller.signal }).catch(() => undefined),
        ...(giveUp ? [giveUp] : []),
      ]);
      return exit ?? this.#exit;
    } finally {
      controller.abort();
      signal?.removeEventListener('abort', onAbort);
    }
  }

  #onEvent(event: QmpEvent): void {
    switch (event.event) {
      case 'SHUTDOWN': {
        const reason = (event.data as { reason?: unknown }).reason;
        this.#expected = typeof reason === 'string' ? reason : 'shutdown';
        break;
      }
      case 'STOP':
        this.emit('paused');
        break;
      case 'RESUME':
        this.emit('resumed');
        break;
      default:
        break;
    }
  }

  #onQmpClose(error: Error | undefined): void {
    if (this.#qmp === undefined) return; // detached on purpose
    // QEMU closes the monitor when it exits; confirm with the process, which may take a moment to go.
    const check = (): void => {
      if (!isAlive(this.handle)) {
        clearInterval(this.#watchTimer);
        this.#gone(this.#expected ?? 'QMP connection closed and the process is gone');
      }
    };
    this.#watchTimer = setInterval(check, WATCH_INTERVAL_MS);
    this.#watchTimer.unref();
    setTimeout(check, 20).unref();
    setTimeout(() => {
      if (!this.#exit && isAlive(this.handle) && error) this.emit('error', error);
    }, 2000).unref();
  }

  /** Records the exit once, cleans the sockets QEMU leaves behind when killed, and tells everyone. */
  #gone(detail: string): void {
    if (this.#exit) return;
    const exit: VmExit = this.#expected !== undefined ? { reason: 'shutdown', detail: this.#expected } : { reason: 'unexpected', detail };
    this.#exit = exit;
    clearInterval(this.#watchTimer);
    const qmp = this.#qmp;
    this.#qmp = undefined;
    qmp?.removeAllListeners();
    qmp?.close();
    for (const socket of [...this.handle.controlSockets, ...this.handle.sockets]) {
      try {
        if (fs.lstatSync(socket).isSocket()) fs.unlinkSync(socket);
      } catch {
        // already gone
      }
    }
    for (const waiter of this.#exitWaiters.splice(0)) waiter(exit);
    this.emit('exit', exit);
  }
}
