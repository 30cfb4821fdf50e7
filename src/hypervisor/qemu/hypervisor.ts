/**
 * {@link QemuHypervisor}: starts QEMU detached from a typed config and attaches to running
 * ones.
 *
 * @module
 */
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { AbortError, InvalidArgumentError, SystemError } from '../../errors.js';
import * as validate from '../../validate.js';
import { VmExitedError, VmStartError } from '../errors.js';
import { probeHost, type HostFacts } from '../host.js';
import type { CallOptions, Hypervisor, SpawnedVm, VmConfig, VmHandle } from '../hypervisor.js';
import { isAlive, logTail, signalProcess, spawnDetached, terminate, waitForProcessExit } from '../../host/process.js';
import { buildQemuCommandLine, type QemuCommandLine } from './cmdline.js';
import { guestCoverageArgs } from './coverage.js';
import { QmpClient } from './qmp.js';
import { QemuVm } from './vm.js';

/** The QEMU binary used unless told otherwise (Debian package qemu-system-x86). */
export const DEFAULT_QEMU_BINARY = '/usr/bin/qemu-system-x86_64';

/** Options of {@link QemuHypervisor}. */
export interface QemuHypervisorOptions {
  /** Default {@link DEFAULT_QEMU_BINARY}. */
  readonly binary?: string;
  /** Default: `kvm` when /dev/kvm can be opened, else `tcg`. */
  readonly accel?: 'kvm' | 'tcg';
  /** QEMU's seccomp filter (default on). */
  readonly seccomp?: boolean;
  /** QMP monitors per VM (default 3): one for the creator, the others for processes that attach. */
  readonly monitors?: number;
  /** Host facts (default: probed once). */
  readonly host?: HostFacts;
  /** Time from spawn to a negotiated QMP connection (default 30 s). */
  readonly startTimeoutMs?: number;
}

/** QEMU has not created or not yet listens on its QMP socket. */
function isRetryableConnectError(error: unknown): boolean {
  return error instanceof SystemError && ['ENOENT', 'ECONNREFUSED', 'EAGAIN'].includes(error.errnoName);
}

/** A QEMU just spawned: its handle, and the wait for its QMP monitor. */
export interface SpawnedQemu extends SpawnedVm {
  ready(options?: CallOptions): Promise<QemuVm>;
}

/** The QEMU backend. */
export class QemuHypervisor implements Hypervisor {
  readonly name = 'qemu';
  readonly binary: string;
  readonly #options: QemuHypervisorOptions;
  #host: HostFacts | undefined;

  constructor(options: QemuHypervisorOptions = {}) {
    this.#options = options;
    this.binary = validate.absolutePath(options.binary ?? DEFAULT_QEMU_BINARY, 'binary');
    this.#host = options.host;
  }

  /** Host facts in use (probed once, on first use). */
  async host(): Promise<HostFacts> {
    this.#host ??= await probeHost(this.binary);
    return this.#host;
  }

  /** The command line `start(config)` would run, for inspection and logs. */
  async commandLine(config: VmConfig): Promise<QemuCommandLine> {
    return buildQemuCommandLine(config, {
      host: await this.host(),
      ...(this.#options.accel === undefined ? {} : { accel: this.#options.accel }),
      ...(this.#options.seccomp === undefined ? {} : { seccomp: this.#options.seccomp }),
      ...(this.#options.monitors === undefined ? {} : { monitors: this.#options.monitors }),
    });
  }

  /**
   * Starts QEMU in its own session with the VM's console log as stdout/stderr, and resolves
   * once QMP is negotiated. The VM keeps running when this process exits.
   */
  async start(config: VmConfig, options: CallOptions = {}): Promise<QemuVm> {
    const spawned = await this.spawn(config, options);
    return spawned.ready(options);
  }



  /**
   * Spawns QEMU and resolves at once with its handle (pid and start time read right after the
   * spawn), before QEMU has done anything: a caller records the handle, then waits for
   * {@link SpawnedVm.ready}. The VM keeps running when this process exits.
   */
  async spawn(config: VmConfig, options: CallOptions = {}): Promise<SpawnedQemu> {
    const cmd = await this.commandLine(config);
    for (const [field, file] of [['kernel', config.kernel], ['initramfs', config.initramfs]] as const) {
      if (file !== undefined && !fs.statSync(file, { throwIfNoEntry: false })?.isFile()) {
        throw new InvalidArgumentError(field, `${file} does not exist or is not a file`);
      }
    }
    if (!fs.statSync(config.runDir, { throwIfNoEntry: false })?.isDirectory()) {
      throw new InvalidArgumentError('runDir', `${config.runDir} is not a directory`);
    }
    for (const socket of [...cmd.qmpSockets, ...cmd.sockets]) {
      // A socket left by a VM that was killed would make QEMU fail to bind.
      if (fs.lstatSync(socket, { throwIfNoEntry: false })?.isSocket()) fs.unlinkSync(socket);
    }
    if (options.signal?.aborted) throw new AbortError('VM start', { cause: options.signal.reason });

    const proc = await spawnDetached(this.binary, [...cmd.args, ...guestCoverageArgs(config.machine ?? 'q35')], {
      output: config.output ?? { file: config.consoleLog },
      fds: cmd.fds,
      umask: 0o177, // QEMU makes sockets and files (an unlinked RAM file), never folders: all 0600
    });
    let exited: string | undefined;
    proc.child.once('exit', (code, signal) => {
      exited = signal ?? `exit code ${code ?? 'unknown'}`;
    });
    const handle: VmHandle = {
      hypervisor: this.name,
      id: config.id,
      pid: proc.pid,
      startTime: proc.startTime,
      machine: config.machine ?? 'q35',
      controlSockets: cmd.qmpSockets,
      consoleLog: config.consoleLog,
      sockets: cmd.sockets,
    };
    const defaultTimeout = this.#options.startTimeoutMs ?? 30_000;
    return {
      handle,
      ready: async (ready: CallOptions = {}): Promise<QemuVm> => {
        const timeoutMs = ready.timeoutMs ?? defaultTimeout;
        const deadline = Date.now() + timeoutMs;
        const fail = async (error: Error): Promise<never> => {
          signalProcess(proc, 'SIGKILL');
          await waitForProcessExit(proc, 5000);
          for (const socket of [...cmd.qmpSockets, ...cmd.sockets]) fs.rmSync(socket, { force: true });
          throw error;
        };
        const [qmpSocket] = cmd.qmpSockets;
        for (;;) {
          if (exited !== undefined) {
            return fail(new VmStartError(config.id, `QEMU exited during start (${exited})`, logTail(config.consoleLog)));
          }
          if (ready.signal?.aborted) return fail(new AbortError('VM start', { cause: ready.signal.reason }));
          if (Date.now() >= deadline) {
            return fail(new VmStartError(config.id, `QMP did not come up within ${timeoutMs} ms`, logTail(config.consoleLog)));
          }
          try {
            const qmp = await QmpClient.connect(qmpSocket ?? '', { timeoutMs: Math.max(deadline - Date.now(), 1), signal: ready.signal });
            return new QemuVm(handle, qmp, { kvm: cmd.accel === 'kvm', child: proc.child });
          } catch (error) {
            if (!isRetryableConnectError(error)) {
              return fail(error instanceof AbortError ? error : new VmStartError(config.id, `QMP failed: ${(error as Error).message}`, logTail(config.consoleLog), { cause: error }));
            }
          }
          await sleep(5);
        }
      },
    };
  }

  /** SIGKILL through a pidfd, after checking the process is the one the handle names; waits until it is gone. */
  async kill(handle: VmHandle): Promise<void> {
    if (isAlive(handle) && !(await terminate(handle, 0))) throw new VmExitedError(handle.id, `QEMU (pid ${handle.pid}) did not die from SIGKILL`);
  }

  /**
   * Attaches to a VM from its persisted handle: checks the process is the one recorded, then
   * connects to whichever QMP monitor is free (all are tried at once; the first greeting wins).
   */
  async attach(handle: VmHandle, options: CallOptions = {}): Promise<QemuVm> {
    if (handle.hypervisor !== this.name) throw new InvalidArgumentError('handle.hypervisor', `is "${handle.hypervisor}", not "qemu"`);
    validate.integer(handle.pid, 'handle.pid', 1, 0x7fffffff);
    if (!Array.isArray(handle.controlSockets) || handle.controlSockets.length === 0) {
      throw new InvalidArgumentError('handle.controlSockets', 'must list the QMP sockets');
    }
    if (!isAlive(handle)) throw new VmExitedError(handle.id, `process ${handle.pid} is gone`);
    const timeoutMs = options.timeoutMs ?? 10_000;
    const winner = new AbortController();
    const onAbort = (): void => winner.abort(options.signal?.reason);
    options.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const attempts = handle.controlSockets.map((socket) =>
        QmpClient.connect(validate.absolutePath(socket, 'handle.controlSockets'), { timeoutMs, signal: winner.signal }),
      );
      let qmp: QmpClient;
      try {
        qmp = await Promise.any(attempts);
      } catch (error) {
        if (options.signal?.aborted) throw new AbortError('VM attach', { cause: options.signal.reason });
        if (!isAlive(handle)) throw new VmExitedError(handle.id, `process ${handle.pid} is gone`);
        throw new VmStartError(handle.id, 'no QMP monitor answered (all busy or broken)', '', { cause: error });
      }
      winner.abort();
      // Close the monitors that also answered: only one is kept.
      for (const attempt of attempts) {
        attempt.then((other) => other !== qmp && other.close(), () => undefined);
      }
      return new QemuVm(handle, qmp, { kvm: (await this.host()).kvm && this.#options.accel !== 'tcg' });
    } finally {
      options.signal?.removeEventListener('abort', onAbort);
    }
  }
}
