/**
 * virtiofsd, the vhost-user daemon behind a virtio-fs share: Debian's QEMU ships the C one at
 * /usr/lib/qemu/virtiofsd. vmpod creates the listening socket itself and hands it over
 * (`--fd=3`), so QEMU can connect as soon as `start()` resolves, and runs the daemon detached so
 * that the share outlives the Node process, like the VM.
 *
 * virtiofsd sandboxes itself (`-o sandbox=namespace`, the default here): once QEMU connects it
 * enters new mount, pid and network namespaces and pivot_roots into the shared directory, so it
 * cannot see the rest of the host's file system. It exits when QEMU disconnects. Guest RAM must
 * be shared (`memory.backend` memfd or file, `shared: true`).
 *
 * Equivalent of `/usr/lib/qemu/virtiofsd --socket-path=SOCK -o source=DIR -o cache=auto`.
 *
 * @module
 */
import fs from 'node:fs';
import { AbortError, InvalidArgumentError } from '../errors.js';
import { native } from '../native.js';
import { systemError } from '../native-call.js';
import * as validate from '../validate.js';
import { socketPath } from './config.js';
import { waitForConsoleLine } from './console.js';
import { DaemonError } from './errors.js';
import { isAlive, logTail, signalProcess, spawnDetached, waitForProcessExit, type ProcessIdentity } from '../host/process.js';

/** Debian's virtiofsd (package qemu-system-common, pulled in by qemu-system-x86). */
export const DEFAULT_VIRTIOFSD = '/usr/lib/qemu/virtiofsd';

/** What virtiofsd prints once it waits for QEMU. */
const READY_LINE = 'Waiting for vhost-user socket connection';

/** Options of {@link Virtiofsd.start}. */
export interface VirtiofsdOptions {
  /** The directory the guest sees. */
  readonly sharedDir: string;
  /** The vhost-user socket QEMU connects to (created here; must not exist as anything but a stale socket). */
  readonly socket: string;
  /** virtiofsd's stderr is appended here. */
  readonly logFile: string;
  /** Guest caching of metadata and data (default `auto`). */
  readonly cache?: 'auto' | 'always' | 'none';
  /** Pass extended attributes through (default off). */
  readonly xattr?: boolean;
  /** Tell the guest about mount points inside the share (default off). */
  readonly announceSubmounts?: boolean;
  /** Worker threads (default: virtiofsd's, 64). */
  readonly threadPoolSize?: number;
  /** `namespace` (default) or `chroot` (inside a container that forbids namespaces). */
  readonly sandbox?: 'namespace' | 'chroot';
  /** Default {@link DEFAULT_VIRTIOFSD}. */
  readonly binary?: string;
  /** Default 10 s. */
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
  /**
   * Called with the daemon's identity the moment it is spawned, before the wait for it to be
   * ready: a caller records it there, so that a crash during the wait leaves nothing unknown.
   */
  readonly onSpawn?: (handle: VirtiofsdHandle) => Promise<void>;
}

/** What a caller persists to stop a virtiofsd from another process. JSON-serialisable. */
export interface VirtiofsdHandle extends ProcessIdentity {
  readonly socket: string;
  readonly sharedDir: string;
  readonly logFile: string;
}

/** A running virtiofsd. */
export class Virtiofsd {
  private constructor(readonly handle: VirtiofsdHandle) {}

  /** Starts virtiofsd for `sharedDir` and resolves once it waits for QEMU. */
  static async start(options: VirtiofsdOptions): Promise<Virtiofsd> {
    const sharedDir = validate.absolutePath(options.sharedDir, 'sharedDir');
    if (sharedDir.includes(',') || /[\x00-\x1f]/u.test(sharedDir)) {
      throw new InvalidArgumentError('sharedDir', `${JSON.stringify(sharedDir)} contains ',' or control characters, which virtiofsd's -o parser cannot take`);
    }
    if (!fs.statSync(sharedDir, { throwIfNoEntry: false })?.isDirectory()) {
      throw new InvalidArgumentError('sharedDir', `${sharedDir} is not a directory`);
    }
    const socket = socketPath(options.socket, 'socket');
    const logFile = validate.absolutePath(options.logFile, 'logFile');
    const binary = validate.absolutePath(options.binary ?? DEFAULT_VIRTIOFSD, 'binary');
    const cache = options.cache ?? 'auto';
    if (!['auto', 'always', 'none'].includes(cache)) throw new InvalidArgumentError('cache', 'must be "auto", "always" or "none"');
    const sandbox = options.sandbox ?? 'namespace';
    if (sandbox !== 'namespace' && sandbox !== 'chroot') throw new InvalidArgumentError('sandbox', 'must be "namespace" or "chroot"');
    if (options.threadPoolSize !== undefined) validate.integer(options.threadPoolSize, 'threadPoolSize', 1, 1024);
    if (options.signal?.aborted) throw new AbortError('virtiofsd start', { cause: options.signal.reason });

    const existing = fs.lstatSync(socket, { throwIfNoEntry: false });
    if (existing !== undefined) {
      if (!existing.isSocket()) throw new InvalidArgumentError('socket', `${socket} exists and is not a socket`);
      fs.unlinkSync(socket);
    }
    const args = [
      '--fd=3',
      '-o', `source=${sharedDir}`,
      '-o', `cache=${cache}`,
      '-o', `sandbox=${sandbox}`,
      '-o', options.xattr === true ? 'xattr' : 'no_xattr',
      // Leave RLIMIT_NOFILE as inherited: raising it needs CAP_SYS_RESOURCE, which hosts may lack.
      '--rlimit-nofile=0',
    ];
    if (options.announceSubmounts === true) args.push('-o', 'announce_submounts');
    if (options.threadPoolSize !== undefined) args.push(`--thread-pool-size=${options.threadPoolSize}`);

    const offset = fs.statSync(logFile, { throwIfNoEntry: false })?.size ?? 0;
    let listener: number;
    try {
      listener = native().unixListen(socket, 1);
      fs.chmodSync(socket, 0o600); // QEMU (its owner) alone connects
    } catch (error) {
      throw systemError(error);
    }
    let proc;
    try {
      proc = await spawnDetached(binary, args, { output: { file: logFile }, fds: [listener] });
    } catch (cause) {
      fs.rmSync(socket, { force: true });
      throw new DaemonError('virtiofsd', `cannot start ${binary}: ${(cause as Error).message}`, '', { cause });
    } finally {
      fs.closeSync(listener);
    }
    let exited: string | undefined;
    proc.child.once('exit', (code, signal) => {
      exited = signal ?? `exit code ${code ?? 'unknown'}`;
    });
    const daemon = new Virtiofsd({ pid: proc.pid, startTime: proc.startTime, socket, sharedDir, logFile });
    try {
      await options.onSpawn?.(daemon.handle);
      await waitForConsoleLine(logFile, READY_LINE, {
        offset,
        timeoutMs: options.timeoutMs ?? 10_000,
        signal: options.signal,
        abortWhen: () => (exited === undefined ? undefined : new DaemonError('virtiofsd', `exited during start (${exited})`, logTail(logFile))),
      });
    } catch (error) {
      await daemon.stop();
      throw error instanceof DaemonError || error instanceof AbortError
        ? error
        : new DaemonError('virtiofsd', `did not become ready: ${(error as Error).message}`, logTail(logFile), { cause: error });
    }
    return daemon;
  }

  /** Takes over a virtiofsd started by another process. */
  static attach(handle: VirtiofsdHandle): Virtiofsd {
    validate.integer(handle.pid, 'handle.pid', 1, 0x7fffffff);
    socketPath(handle.socket, 'handle.socket');
    return new Virtiofsd(handle);
  }

  /** True while the daemon runs. */
  get running(): boolean {
    return isAlive(this.handle);
  }

  /** SIGTERM, then SIGKILL after `timeoutMs` (default 3 s); removes the socket. Idempotent. */
  async stop(timeoutMs = 3000): Promise<void> {
    if (signalProcess(this.handle, 'SIGTERM') && !(await waitForProcessExit(this.handle, timeoutMs))) {
      signalProcess(this.handle, 'SIGKILL');
      await waitForProcessExit(this.handle, 5000);
    }
    fs.rmSync(this.handle.socket, { force: true });
  }

  /** Resolves when the daemon is gone (it exits by itself when QEMU disconnects). */
  async waitForExit(signal?: AbortSignal): Promise<void> {
    while (!(await waitForProcessExit(this.handle, 1000, signal))) {
      if (signal?.aborted) throw new AbortError('waiting for virtiofsd to exit', { cause: signal.reason });
    }
  }
}
