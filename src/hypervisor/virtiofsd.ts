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
 * With `user` it runs without root on the host: in a user namespace of its own whose ids
 * 0..count-1 are the host's uid..uid+count-1 (gid likewise), created by root (so a host process of
 * that uid cannot enter it), joined with uid and gid 0 there. virtiofsd then is host uid `uid`
 * with no capability outside the namespace, and still confines itself inside it: by default it
 * chroots into the share, in a network namespace of its own (`sandbox=namespace` needs to read the
 * host's `/`, which a 0711 root forbids). A host process with the same uid could still ptrace it: the range must be
 * virtiofsd's alone. The guest sees host id `uid + k` as `k`; host ids outside the range
 * appear as 65534 (overflow) and the guest can use such files only as "others". Equivalent:
 * `unshare --user --net sh -c 'read _' &` (the holder), `echo 0 UID COUNT > /proc/HOLDER/uid_map`
 * (and gid_map), `nsenter --user=/proc/HOLDER/ns/user --net=/proc/HOLDER/ns/net --setuid=0
 * --setgid=0 -- virtiofsd -o sandbox=chroot ...`, then the
 * holder exits. See docs/hypervisor.md for what this does not cover (a share owned by host root).
 *
 * @module
 */
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { AbortError, InvalidArgumentError, TimeoutError } from '../errors.js';
import { native } from '../native.js';
import { systemError } from '../native-call.js';
import * as validate from '../validate.js';
import { runAsUser, socketPath } from './config.js';
import { waitForConsoleLine } from './console.js';
import { DaemonError } from './errors.js';
import { isAlive, logTail, signalProcess, spawnDetached, waitForProcessExit, type DetachedProcess, type ProcessIdentity } from '../host/process.js';

/** Debian's virtiofsd (package qemu-system-common, pulled in by qemu-system-x86). */
export const DEFAULT_VIRTIOFSD = '/usr/lib/qemu/virtiofsd';

/** What virtiofsd prints once it waits for QEMU. */
const READY_LINE = 'Waiting for vhost-user socket connection';

/** util-linux (Essential on Debian): the user namespace of an unprivileged virtiofsd. */
const UNSHARE = '/usr/bin/unshare';
const NSENTER = '/usr/bin/nsenter';

/** Ids mapped into the user namespace by default: 0..65535, as a subordinate range of /etc/subuid. */
export const DEFAULT_USER_ID_COUNT = 65536;

/** Highest valid id (2^32 - 1 is `(uid_t) -1`). */
const MAX_ID = 2 ** 32 - 2;

/** The host identity of an unprivileged virtiofsd ({@link VirtiofsdOptions.user}). */
export interface VirtiofsdUser {
  /** Host uid of the daemon: uid 0 of its user namespace. Host uids uid..uid+count-1 are 0..count-1 there. */
  readonly uid: number;
  /** Host gid of the daemon: gid 0 of its user namespace, likewise. */
  readonly gid: number;
  /** How many ids are mapped (default {@link DEFAULT_USER_ID_COUNT}). */
  readonly count?: number;
}

/** Checks {@link VirtiofsdUser}: not root, and the whole range valid. */
export function checkUser(value: unknown, field: string): Required<VirtiofsdUser> {
  if (typeof value !== 'object' || value === null) throw new InvalidArgumentError(field, 'must be { uid, gid, count? }');
  const v = value as Record<string, unknown>;
  for (const key of Object.keys(v)) if (!['uid', 'gid', 'count'].includes(key)) throw new InvalidArgumentError(`${field}.${key}`, 'unknown field');
  const uid = validate.integer(v['uid'], `${field}.uid`, 1, MAX_ID);
  const gid = validate.integer(v['gid'], `${field}.gid`, 1, MAX_ID);
  const count = validate.integer(v['count'] ?? DEFAULT_USER_ID_COUNT, `${field}.count`, 1, MAX_ID + 1 - Math.max(uid, gid));
  return { uid, gid, count };
}

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
  /**
   * How virtiofsd confines itself once QEMU connects: `namespace` (its own mount, pid and net
   * namespaces, pivot_root into the share) or `chroot` (chroot into the share). Default
   * `namespace`; with {@link user}, `chroot` inside a network namespace vmpod makes for it, because
   * `namespace` opens the host's `/` for reading before its pivot_root, which an unprivileged uid
   * cannot do where `/` is mode 0711 (hardened hosts; this one). `namespace` with `user` is
   * refused there with an {@link InvalidArgumentError}.
   */
  readonly sandbox?: 'namespace' | 'chroot';
  /**
   * Run virtiofsd as this unprivileged host user, in a user namespace of its own mapping ids
   * 0..count-1 to host uid..uid+count-1 (see the module comment). The shared directory must be
   * reachable by that uid (every parent searchable), and its files owned by ids of the range for
   * the guest to own them: give each daemon a range no other process uses. Needs root here (the
   * maps are written by this process) and util-linux's unshare and nsenter.
   */
  readonly user?: VirtiofsdUser;
  /**
   * Owner of the socket (mode 0600), for a QEMU that connects after it dropped root (`runAs`),
   * e.g. on a hot plug. Default: root (QEMU connects devices given at start before it drops).
   */
  readonly socketOwner?: { readonly uid: number; readonly gid: number };
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
    const user = options.user === undefined ? undefined : checkUser(options.user, 'user');
    const sandbox = options.sandbox ?? (user ? 'chroot' : 'namespace');
    if (sandbox !== 'namespace' && sandbox !== 'chroot') throw new InvalidArgumentError('sandbox', 'must be "namespace" or "chroot"');
    if (user && sandbox === 'namespace') checkRootReadable(user);
    if (options.threadPoolSize !== undefined) validate.integer(options.threadPoolSize, 'threadPoolSize', 1, 1024);
    const socketOwner = options.socketOwner === undefined ? undefined : runAsUser(options.socketOwner, 'socketOwner');
    const timeoutMs = options.timeoutMs ?? 10_000;
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
    } catch (error) {
      throw systemError(error);
    }
    try {
      fs.chmodSync(socket, 0o600); // QEMU (its owner) alone connects
      if (socketOwner) fs.chownSync(socket, socketOwner.uid, socketOwner.gid);
    } catch (error) {
      fs.closeSync(listener);
      fs.rmSync(socket, { force: true });
      throw error;
    }
    const deadline = Date.now() + timeoutMs;
    let userns: UserNamespace | undefined;
    let proc: DetachedProcess;
    try {
      if (user) userns = await UserNamespace.create(user, logFile, deadline, options.signal);
      proc = userns
        ? await spawnDetached(NSENTER, [`--user=/proc/${userns.holder.pid}/ns/user`, `--net=/proc/${userns.holder.pid}/ns/net`, '--setuid=0', '--setgid=0', '--', binary, ...args], {
            output: { file: logFile },
            fds: [listener],
          })
        : await spawnDetached(binary, args, { output: { file: logFile }, fds: [listener] });
    } catch (cause) {
      userns?.release();
      fs.rmSync(socket, { force: true });
      if (cause instanceof DaemonError || cause instanceof AbortError) throw cause;
      throw new DaemonError('virtiofsd', `cannot start ${binary}: ${(cause as Error).message}`, logTail(logFile), { cause });
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
        timeoutMs: Math.max(1, deadline - Date.now()),
        signal: options.signal,
        abortWhen: () => (exited === undefined ? undefined : new DaemonError('virtiofsd', `exited during start (${exited})`, logTail(logFile))),
      });
      // It printed the line, so nsenter is done: check that it is what was asked, before the namespace's holder goes.
      if (user && userns) checkUnprivileged(proc.pid, binary, user, userns);
    } catch (error) {
      await daemon.stop();
      throw error instanceof DaemonError || error instanceof AbortError
        ? error
        : new DaemonError('virtiofsd', `did not become ready: ${(error as Error).message}`, logTail(logFile), { cause: error });
    } finally {
      userns?.release();
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

/**
 * A fresh user namespace, and a network namespace it owns (no interface but a down loopback), held
 * open by a process (`unshare --user --net sh -c 'read _'`, stdin a pipe of ours) while its maps
 * are written and virtiofsd joins both; the holder exits when the pipe closes (by
 * {@link release}, or when this process dies). The network namespace keeps a daemon that a guest
 * took over off the host's network in `chroot` mode too.
 */
class UserNamespace {
  #write: number | undefined;

  private constructor(
    readonly holder: DetachedProcess,
    /** `user:[INODE]`, as /proc/PID/ns/user reads. */
    readonly id: string,
    /** `net:[INODE]` of the holder's network namespace. */
    readonly net: string,
    write: number,
  ) {
    this.#write = write;
  }

  static async create(user: Required<VirtiofsdUser>, logFile: string, deadline: number, signal?: AbortSignal): Promise<UserNamespace> {
    const [read, write] = native().pipe();
    let holder: DetachedProcess;
    try {
      holder = await spawnDetached(UNSHARE, ['--user', '--net', '--', '/bin/sh', '-c', 'read -r _'], { output: { file: logFile }, stdin: read });
    } catch (error) {
      native().closeFd(write);
      throw error;
    } finally {
      native().closeFd(read);
    }
    const fail = (message: string, cause?: unknown): never => {
      native().closeFd(write);
      throw new DaemonError('virtiofsd', message, logTail(logFile), cause === undefined ? {} : { cause });
    };
    const own = fs.readlinkSync('/proc/self/ns/user');
    const ownNet = fs.readlinkSync('/proc/self/ns/net');
    const started = Date.now();
    let id: string | undefined;
    let net: string | undefined;
    for (;;) {
      if (!isAlive(holder)) fail(`${UNSHARE} --user --net exited: no user namespace (are user namespaces enabled?)`);
      try {
        id = fs.readlinkSync(`/proc/${holder.pid}/ns/user`);
        net = fs.readlinkSync(`/proc/${holder.pid}/ns/net`);
      } catch {
        id = undefined;
      }
      // unshare(2) makes both at once, so the new user namespace comes with the new network one.
      if (id !== undefined && net !== undefined && id !== own && net !== ownNet) break;
      if (signal?.aborted) {
        native().closeFd(write);
        throw new AbortError('virtiofsd start', { cause: signal.reason });
      }
      if (Date.now() > deadline) fail(`${UNSHARE} --user made no user namespace`, new TimeoutError('user namespace', deadline - started));
      await sleep(5);
    }
    try {
      // Root in the parent namespace may map any range, once. setgroups stays allowed (virtiofsd drops its groups).
      fs.writeFileSync(`/proc/${holder.pid}/uid_map`, `0 ${user.uid} ${user.count}\n`);
      fs.writeFileSync(`/proc/${holder.pid}/gid_map`, `0 ${user.gid} ${user.count}\n`);
    } catch (error) {
      fail(`cannot map ids into the user namespace: ${(error as Error).message}`, error);
    }
    return new UserNamespace(holder, id, net!, write);
  }

  /** Lets the holder exit (the namespace lives on while virtiofsd is in it). Idempotent. */
  release(): void {
    if (this.#write !== undefined) native().closeFd(this.#write);
    this.#write = undefined;
  }
}

/**
 * Throws unless `user.uid` (no capability over host root's `/`: that owner is not in its map) may
 * open `/` for reading, which `sandbox=namespace` does before its pivot_root.
 */
function checkRootReadable(user: Required<VirtiofsdUser>): void {
  const root = fs.statSync('/');
  const bits = root.uid === user.uid ? 0o400 : root.gid === user.gid ? 0o040 : 0o004;
  if ((root.mode & bits) === 0) {
    const mode = (root.mode & 0o7777).toString(8).padStart(4, '0');
    throw new InvalidArgumentError('sandbox', `"namespace" opens the host's / for reading before its pivot_root, and / is mode ${mode}, which uid ${user.uid} cannot read: use "chroot" (the default with user)`);
  }
}

/** Throws unless process `pid` is `binary` (nsenter did not fork) with exactly the host ids of `user`, no groups, in the user and network namespaces of `ns`, mapped as asked. */
function checkUnprivileged(pid: number, binary: string, user: Required<VirtiofsdUser>, ns: UserNamespace): void {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): string => status.match(new RegExp(`^${name}:[ \\t]*(.*)$`, 'mu'))?.[1]?.trim() ?? '';
  const ids = (name: string): number[] => field(name).split(/\s+/u).map(Number);
  const uidMap = fs.readFileSync(`/proc/${pid}/uid_map`, 'utf8').trim().split(/\s+/u).map(Number);
  const gidMap = fs.readFileSync(`/proc/${pid}/gid_map`, 'utf8').trim().split(/\s+/u).map(Number);
  const problems = [
    fs.readlinkSync(`/proc/${pid}/exe`) === fs.realpathSync(binary) ? '' : `not ${binary}`,
    ids('Uid').every((id) => id === user.uid) ? '' : `uids ${field('Uid')}`,
    ids('Gid').every((id) => id === user.gid) ? '' : `gids ${field('Gid')}`,
    field('Groups') === '' ? '' : `groups ${field('Groups')}`,
    fs.readlinkSync(`/proc/${pid}/ns/user`) === ns.id ? '' : 'another user namespace',
    fs.readlinkSync(`/proc/${pid}/ns/net`) === ns.net ? '' : 'another network namespace',
    uidMap.join(' ') === `0 ${user.uid} ${user.count}` ? '' : `uid_map ${uidMap.join(' ')}`,
    gidMap.join(' ') === `0 ${user.gid} ${user.count}` ? '' : `gid_map ${gidMap.join(' ')}`,
  ].filter(Boolean);
  if (problems.length > 0) throw new DaemonError('virtiofsd', `does not run as asked (${user.uid}:${user.gid}): ${problems.join(', ')}`, '');
}
