/**
 * Image config → OCI runtime spec, as the image spec's conversion document says
 * (image-spec conversion.md): `process.args` = Entrypoint ++ Cmd, `process.env` = Env (with
 * `PATH` and `TERM` added when missing), `process.cwd` = WorkingDir (or `/`), `process.user`
 * from User resolved against the image's own /etc/passwd and /etc/group (with additional gids
 * from group membership, as runc does), and the implicit annotations (os, architecture,
 * variant, os.version, os.features, author, created, stopSignal, exposedPorts) under the
 * config's Labels, which take precedence. Everything else is vmpod's default spec (what `runc
 * spec` writes, with Docker's capabilities: src/container/spec.ts).
 *
 * `Config.Volumes` is not turned into mounts: each container of an image writes to its own
 * copy-on-write layer, so data written there stays out of the image anyway; a caller that wants
 * a volume there mounts one.
 *
 * @module
 */
import path from 'node:path';
import type { OciSpec } from '../agent/messages.js';
import { InvalidArgumentError } from '../errors.js';
import { defaultSpec } from '../container/spec.js';
import type { ImageConfig } from './config.js';
import { InvalidImageError } from './errors.js';

/** What a caller may change in the spec made from an image (the `docker run` options of the same names). */
export interface RuntimeSpecOverrides {
  /** Replaces the image's Entrypoint (`--entrypoint`); `[]` clears it. */
  entrypoint?: string[];
  /** Replaces the image's Cmd (`docker run IMAGE CMD...`): Entrypoint is kept. */
  cmd?: string[];
  /** `KEY=VALUE` entries added to the image's Env, replacing same-named ones. */
  env?: string[];
  /** Replaces WorkingDir (absolute). */
  cwd?: string;
  /** Replaces User (`uid`, `uid:gid`, `name`, `name:group`), resolved the same way. */
  user?: string;
  /** `spec.hostname` (and `HOSTNAME` in the environment when the image sets none); none by default. */
  hostname?: string;
  /** `process.terminal`. */
  terminal?: boolean;
}

/** Options of {@link imageRuntimeSpec}: the image's user files and the overrides. */
export interface RuntimeSpecOptions extends RuntimeSpecOverrides {
  /** The text of the image rootfs's /etc/passwd (undefined when it has none). */
  passwd?: string | undefined;
  /** The text of the image rootfs's /etc/group (undefined when it has none). */
  group?: string | undefined;
  /** The image reference, for messages. */
  reference?: string;
}

/** A process user, resolved. */
export interface ResolvedUser {
  uid: number;
  gid: number;
  additionalGids?: number[];
  /** The user's home directory from /etc/passwd, when the user has an entry. */
  home?: string;
}

interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

interface GroupEntry {
  name: string;
  gid: number;
  members: string[];
}

const MAX_ID = 0xfffffffe;

function parseId(text: string): number | undefined {
  if (!/^[0-9]{1,10}$/u.test(text)) return undefined;
  const id = Number(text);
  return id <= MAX_ID ? id : undefined;
}

/** The entries of an /etc/passwd text (`name:password:uid:gid:gecos:home:shell`); malformed lines are skipped, as libc does. */
export function parsePasswd(text: string): PasswdEntry[] {
  const entries: PasswdEntry[] = [];
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const fields = line.split(':');
    if (fields.length < 4) continue;
    const uid = parseId(fields[2]!);
    const gid = parseId(fields[3]!);
    if (uid === undefined || gid === undefined || fields[0] === '') continue;
    entries.push({ name: fields[0]!, uid, gid, home: fields[5] ?? '' });
  }
  return entries;
}

/** The entries of an /etc/group text (`name:password:gid:member,member`). */
export function parseGroup(text: string): GroupEntry[] {
  const entries: GroupEntry[] = [];
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const fields = line.split(':');
    if (fields.length < 3) continue;
    const gid = parseId(fields[2]!);
    if (gid === undefined || fields[0] === '') continue;
    entries.push({ name: fields[0]!, gid, members: (fields[3] ?? '').split(',').map((m) => m.trim()).filter((m) => m !== '') });
  }
  return entries;
}

/**
 * Resolves `user[:group]` as runc does: a numeric user is taken as given (its gid, home and
 * groups come from its /etc/passwd entry when there is one; else gid 0); a name must be in
 * `passwd`; a group, numeric or a name in `group`, sets the gid and then no additional gids are
 * added; without one, the user's additional gids are the groups that list it as a member. An
 * empty `user` is root. `fail(problem)` throws the caller's error.
 */
export function resolveUser(user: string, files: { passwd?: string | undefined; group?: string | undefined }, fail: (problem: string) => never): ResolvedUser {
  if (user === '') return { uid: 0, gid: 0 };
  const colon = user.indexOf(':');
  const userPart = colon < 0 ? user : user.slice(0, colon);
  const groupPart = colon < 0 ? undefined : user.slice(colon + 1);
  if (userPart === '') fail(`user ${JSON.stringify(user)} names no user`);
  const passwd = files.passwd === undefined ? [] : parsePasswd(files.passwd);
  const numericUid = parseId(userPart);
  let entry: PasswdEntry | undefined;
  if (numericUid !== undefined) entry = passwd.find((e) => e.uid === numericUid);
  else if (/^[0-9]+$/u.test(userPart)) fail(`uid ${userPart} is out of range`);
  else {
    entry = passwd.find((e) => e.name === userPart);
    if (!entry) fail(files.passwd === undefined ? `user ${JSON.stringify(userPart)}: the image has no /etc/passwd` : `no user ${JSON.stringify(userPart)} in the image's /etc/passwd`);
  }
  const resolved: ResolvedUser = { uid: numericUid ?? entry!.uid, gid: entry?.gid ?? 0 };
  if (entry && entry.home !== '') resolved.home = entry.home;
  const groups = files.group === undefined ? [] : parseGroup(files.group);
  if (groupPart !== undefined && groupPart !== '') {
    const gid = parseId(groupPart);
    if (gid !== undefined) resolved.gid = gid;
    else if (/^[0-9]+$/u.test(groupPart)) fail(`gid ${groupPart} is out of range`);
    else {
      const found = groups.find((g) => g.name === groupPart);
      if (!found) fail(files.group === undefined ? `group ${JSON.stringify(groupPart)}: the image has no /etc/group` : `no group ${JSON.stringify(groupPart)} in the image's /etc/group`);
      resolved.gid = found!.gid;
    }
    return resolved;
  }
  if (entry) {
    const additional = [...new Set(groups.filter((g) => g.members.includes(entry.name)).map((g) => g.gid))];
    if (additional.length > 0) resolved.additionalGids = additional;
  }
  return resolved;
}

function envName(entry: string): string {
  const eq = entry.indexOf('=');
  return eq < 0 ? entry : entry.slice(0, eq);
}

/** `base` with `added` entries, which replace same-named ones. */
function mergeEnv(base: string[], added: string[]): string[] {
  const names = new Set(added.map(envName));
  return [...base.filter((e) => !names.has(envName(e))), ...added];
}

/** The implicit annotations of the conversion document, then the Labels over them. */
export function imageAnnotations(config: ImageConfig): Record<string, string> {
  const annotations: Record<string, string> = {
    'org.opencontainers.image.os': config.os,
    'org.opencontainers.image.architecture': config.architecture,
  };
  if (config.variant !== undefined) annotations['org.opencontainers.image.variant'] = config.variant;
  const osVersion = config.raw['os.version'];
  if (typeof osVersion === 'string') annotations['org.opencontainers.image.os.version'] = osVersion;
  const osFeatures = config.raw['os.features'];
  if (Array.isArray(osFeatures) && osFeatures.every((f) => typeof f === 'string')) annotations['org.opencontainers.image.os.features'] = osFeatures.join(',');
  if (config.author !== undefined) annotations['org.opencontainers.image.author'] = config.author;
  if (config.created !== undefined) annotations['org.opencontainers.image.created'] = config.created;
  if (config.config.StopSignal !== undefined) annotations['org.opencontainers.image.stopSignal'] = config.config.StopSignal;
  if (config.config.ExposedPorts !== undefined) annotations['org.opencontainers.image.exposedPorts'] = Object.keys(config.config.ExposedPorts).sort().join(',');
  return { ...annotations, ...config.config.Labels };
}

function checkStrings(value: unknown, field: string): string[] {
  if (!Array.isArray(value) || !value.every((s) => typeof s === 'string' && !s.includes('\0'))) throw new InvalidArgumentError(field, 'must be an array of strings');
  return value as string[];
}

/**
 * The runtime spec of a container of an image (see the module comment). Throws
 * InvalidImageError when the image names no command (neither Entrypoint nor Cmd, and no
 * override) or a User its /etc/passwd or /etc/group does not have, InvalidArgumentError for a
 * bad override.
 */
export function imageRuntimeSpec(config: ImageConfig, options: RuntimeSpecOptions = {}): OciSpec {
  const reference = options.reference ?? 'image';
  const c = config.config;
  const entrypoint = options.entrypoint !== undefined ? checkStrings(options.entrypoint, 'entrypoint') : (c.Entrypoint ?? []);
  const cmd = options.cmd !== undefined ? checkStrings(options.cmd, 'cmd') : (c.Cmd ?? []);
  const args = [...entrypoint, ...cmd];
  if (args.length === 0) throw new InvalidImageError(reference, 'the config has neither Entrypoint nor Cmd: give a command');
  const overrideUser = options.user !== undefined;
  if (overrideUser && typeof options.user !== 'string') throw new InvalidArgumentError('user', 'must be a string');
  const user = resolveUser(options.user ?? c.User ?? '', options, (problem) => {
    if (overrideUser) throw new InvalidArgumentError('user', problem);
    throw new InvalidImageError(reference, `config.User ${JSON.stringify(c.User)}: ${problem}`);
  });
  let cwd = '/';
  if (options.cwd !== undefined) {
    if (typeof options.cwd !== 'string' || !options.cwd.startsWith('/')) throw new InvalidArgumentError('cwd', 'must be an absolute path');
    cwd = options.cwd;
  } else if (c.WorkingDir !== undefined) cwd = path.posix.resolve('/', c.WorkingDir);
  const spec = defaultSpec({ args, hostname: options.hostname ?? 'vmpod', terminal: options.terminal === true });
  // The defaults (PATH, TERM, HOSTNAME, HOME) only where the image's Env has no such name.
  const defaults = (spec.process.env ?? []).filter((e) => options.hostname !== undefined || envName(e) !== 'HOSTNAME');
  if (user.home !== undefined) defaults.push(`HOME=${user.home}`);
  let env = [...(c.Env ?? [])];
  const names = new Set(env.map(envName));
  env.push(...defaults.filter((e) => !names.has(envName(e))));
  if (options.env !== undefined) {
    const added = checkStrings(options.env, 'env');
    if (added.some((e) => !/^[^=]+=/u.test(e))) throw new InvalidArgumentError('env', 'must be an array of KEY=VALUE strings');
    env = mergeEnv(env, added);
  }
  spec.process = {
    ...spec.process,
    args,
    env,
    cwd,
    user: { uid: user.uid, gid: user.gid, ...(user.additionalGids ? { additionalGids: user.additionalGids } : {}) },
  };
  if (options.hostname === undefined) delete spec.hostname;
  spec.annotations = imageAnnotations(config);
  return spec;
}
