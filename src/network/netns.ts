/**
 * Network namespaces, named and persistent as `ip netns` makes them: a bind mount of the
 * namespace under /run/netns, so `ip netns`, CNI plugins and vmpod all see the same ones.
 *
 * @module
 */
import { readdir } from 'node:fs/promises';
import { AlreadyExistsError, InvalidArgumentError, NotFoundError, SystemError } from '../errors.js';
import type { NativeNetns, NativeNs } from '../native.js';
import * as validate from '../validate.js';
import { callNative, type NativeErrorMap } from '../native-call.js';

/** Where named namespaces live, as for iproute2. */
export const NETNS_DIR = '/run/netns';

/**
 * An open network namespace. Holding it keeps the namespace alive (its fd and an rtnetlink socket
 * bound inside it), and calls given it need no path lookup: pass it as `netns` to any networking
 * call. Close it when done; `using ns = await openNetns(...)` does so at the end of the scope.
 */
export class Netns implements Disposable {
  readonly #handle: NativeNetns;
  #closed = false;

  /** @internal Use {@link createNetns} or {@link openNetns}. */
  constructor(
    handle: NativeNetns,
    /** The name under /run/netns, when opened or created by name. */
    readonly name: string | undefined,
  ) {
    this.#handle = handle;
  }

  /** The namespace file, e.g. `/run/netns/NAME`. */
  get path(): string {
    return this.#handle.path;
  }

  /** An O_CLOEXEC fd of the namespace (for setns(2) elsewhere); -1 once closed. */
  get fd(): number {
    return this.#handle.fd;
  }

  /** The namespace's inode: equal for every handle on the same namespace (`stat -L -c %i PATH`). */
  get inode(): number {
    return this.#handle.inode;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** @internal The native handle, for the networking calls. */
  get native(): NativeNetns {
    if (this.#closed) throw new InvalidArgumentError('netns', `the handle on ${this.path} is closed`);
    return this.#handle;
  }

  /** Releases the fd and socket (calls already queued keep them until they finish). Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#handle.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Where a networking call acts: a {@link Netns} handle, a namespace name under /run/netns
 * (`ip -n NAME`), or an absolute path to a namespace file (e.g. `/proc/PID/ns/net`, or the path a
 * CNI runtime was given). Absent: the namespace of the Node process.
 */
export type NetnsRef = Netns | string;

/** Anything that may name the namespace to act in. */
export interface NetnsOption {
  /** The namespace to act in, as `ip -n` (default: the process's own). */
  netns?: NetnsRef | undefined;
}

/** @internal Validates a {@link NetnsRef} and converts it for the addon. */
export function nsArg(ref: NetnsRef | undefined, field = 'netns'): NativeNs {
  if (ref === undefined) return null;
  if (ref instanceof Netns) {
    if (ref.closed) throw new InvalidArgumentError(field, `the handle on ${ref.path} is closed`);
    return ref.native;
  }
  if (typeof ref === 'string' && ref.startsWith('/')) return validate.absolutePath(ref, field);
  return `${NETNS_DIR}/${validate.netnsName(ref, field)}`;
}

/** @internal Maps "the namespace file is missing / not a namespace" to typed errors. */
export const netnsErrors: NativeErrorMap = (e, system) => {
  if (e.syscall !== 'open' || e.target === undefined) return undefined;
  const shown = e.target.startsWith(`${NETNS_DIR}/`) ? e.target.slice(NETNS_DIR.length + 1) : e.target;
  if (e.code === 'ENOENT') return new NotFoundError('netns', shown, { cause: system });
  if (e.code === 'EINVAL' && e.detail?.includes('not a network namespace')) {
    return new InvalidArgumentError('netns', `${e.target} is not a network namespace`, { cause: system });
  }
  return undefined;
};

/**
 * Creates a named, persistent namespace exactly as `ip netns add NAME` does (/run/netns made a
 * shared mount point, then the bind mount of a new namespace) and returns a handle on it.
 *
 * @throws {@link AlreadyExistsError} when the name is taken.
 */
export async function createNetns(name: string): Promise<Netns> {
  const valid = validate.netnsName(name, 'name');
  const handle = await callNative(
    (n) => n.netnsCreate(NETNS_DIR, valid),
    (e, system) => (e.code === 'EEXIST' ? new AlreadyExistsError('netns', valid, { cause: system }) : undefined),
  );
  return new Netns(handle, valid);
}

/**
 * Opens a namespace by name (`ip netns exec NAME` would enter it) or by absolute path.
 *
 * @throws {@link NotFoundError} when there is none; {@link InvalidArgumentError} when the path is
 *   not a network namespace.
 */
export async function openNetns(ref: string): Promise<Netns> {
  const path = nsArg(ref, 'netns') as string;
  const handle = await callNative((n) => n.netnsOpen(path), netnsErrors);
  return new Netns(handle, ref.startsWith('/') ? undefined : ref);
}

/**
 * Deletes a named namespace: `ip netns delete NAME`. The kernel frees it, with every link still
 * inside, once no process, fd or socket holds it (close your {@link Netns} handles).
 *
 * @throws {@link NotFoundError} when there is no such name.
 */
export async function deleteNetns(name: string): Promise<void> {
  const valid = validate.netnsName(name, 'name');
  await callNative(
    (n) => n.netnsDelete(NETNS_DIR, valid),
    (e, system) => (e.code === 'ENOENT' ? new NotFoundError('netns', valid, { cause: system }) : undefined),
  );
}

/** The named namespaces, sorted: `ip netns list`. */
export async function listNetns(): Promise<string[]> {
  try {
    return (await readdir(NETNS_DIR)).sort();
  } catch (e) {
    const error = e as NodeJS.ErrnoException;
    if (error.code === 'ENOENT') return [];
    throw new SystemError('readdir', Math.abs(error.errno ?? 0), error.code ?? 'EIO', `${NETNS_DIR}: ${error.message}`, { cause: e });
  }
}
