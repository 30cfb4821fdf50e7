/**
 * The CNI runtime: runs a network's plugin chain with ADD, CHECK, DEL (and VERSION, STATUS,
 * GC) as the CNI specification's "Execution of Network Configurations" says, the way libcni's
 * `CNIConfig` does, and keeps ADD results in an on-disk cache for CHECK and DEL.
 *
 * ```ts
 * const cni = new CniRuntime({ pluginDirs: ['/usr/local/lib/cni'] });
 * const [net] = await CniConfig.loadDir('/etc/cni/net.d');
 * const result = await cni.add(net, { containerId: 'box1', netns: '/run/netns/box1', ifName: 'eth0' });
 * await cni.check(net, { containerId: 'box1', netns: '/run/netns/box1', ifName: 'eth0' });
 * await cni.del(net, { containerId: 'box1', ifName: 'eth0' }); // netns and args from the cache
 * ```
 *
 * The `cnitool add NET NETNS` equivalent is `cni.add(net, {containerId, netns, ifName})`.
 *
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { InvalidArgumentError, NotFoundError } from '../../errors.js';
import { absolutePath, id, integer, interfaceName } from '../../validate.js';
import { validateAttachment, formatCniArgs, type CniAttachment, type ValidAttachment } from './attachment.js';
import { ResultCache, type CniCachedAttachment } from './cache.js';
import { CniConfig, isNetworkName, isPluginType, type CniPluginConfig, type JsonObject } from './config.js';
import {
  CniAttachmentExistsError,
  CniCacheError,
  CniExecError,
  CniGcError,
  CniOutputError,
  CniPluginError,
  CniPluginNotFoundError,
  CniVersionError,
  type CniCommand,
  type CniInvocation,
} from './errors.js';
import { execPlugin, SpawnError, type ExecOutcome } from './exec.js';
import { parseResult, ResultFormatError, type CniResult } from './result.js';
import { CURRENT_VERSION, atLeast, isVersion } from './version.js';

/** Plugin directories searched after the configured ones, in this order. */
export const DEFAULT_PLUGIN_DIRS: readonly string[] = Object.freeze(['/opt/cni/bin', '/usr/lib/cni']);
/** Default cache directory; results go to its `results/` subdirectory. */
export const DEFAULT_CACHE_DIR = '/var/lib/vmpod/cni';
/** Default limit for one plugin run. */
export const DEFAULT_TIMEOUT_MS = 30_000;
/** Default limit of a plugin's stdout (a result is a few KiB). */
export const DEFAULT_MAX_OUTPUT_BYTES = 1 << 20;

const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const MAX_STDERR_BYTES = 64 << 10;
/** statfs(2) f_type of nsfs, the filesystem of /proc/PID/ns/net and its bind mounts. */
const NSFS_MAGIC = 0x6e736673;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/u;

/** How a {@link CniRuntime} finds plugins, caches results and bounds plugin runs. */
export interface CniRuntimeOptions {
  /** Directories searched first for plugin executables; then /opt/cni/bin, then /usr/lib/cni. */
  readonly pluginDirs?: readonly string[];
  /** Cache directory (results in `results/`); default `/var/lib/vmpod/cni`. */
  readonly cacheDir?: string;
  /** Limit for each plugin run, in ms; default 30 000. The plugin is killed when it is reached. */
  readonly timeoutMs?: number;
  /** Limit of a plugin's stdout in bytes; default 1 MiB. A plugin printing more is killed. */
  readonly maxOutputBytes?: number;
  /**
   * Environment variables given to plugins besides `CNI_*`. Plugins get only `PATH` (from this
   * process) and these, not the rest of this process's environment.
   */
  readonly env?: Readonly<Record<string, string>>;
}

/** Per-call options. */
export interface CniCallOptions {
  /** Cancels the call; the running plugin is killed. (An ADD still undoes its work with DEL.) */
  readonly signal?: AbortSignal;
  /** Overrides {@link CniRuntimeOptions.timeoutMs} for each plugin run of this call. */
  readonly timeoutMs?: number;
}

/** What VERSION reports. */
export interface CniVersionInfo {
  /** The version the plugin answered in. */
  readonly cniVersion: string;
  /** Every CNI version the plugin supports. */
  readonly supportedVersions: readonly string[];
}

/** The attachments GC must keep. */
export interface CniGcOptions extends CniCallOptions {
  /** Attachments of the network that are still in use; every other cached one is deleted. */
  readonly validAttachments?: readonly { readonly containerId: string; readonly ifName: string }[];
}

interface Run {
  readonly timeoutMs: number;
  readonly signal: AbortSignal | undefined;
}

function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Reads a CNI error result (`{code, msg, details}`) out of plugin output, if it is one. */
function parseErrorResult(text: string): { code: number; msg: string; details: string | undefined } | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!isObject(value) || typeof value['code'] !== 'number' || !Number.isInteger(value['code'])) return undefined;
  const msg = typeof value['msg'] === 'string' ? value['msg'] : '';
  const details = value['details'];
  return { code: value['code'], msg, details: details === undefined || details === '' ? undefined : String(details) };
}

/**
 * Runs CNI plugin chains. Cheap to construct; it holds no open resources, so a new instance
 * (or another process) given the same `cacheDir` can CHECK and DEL what this one added.
 * Operations on one container are serialized within an instance, as the spec requires.
 */
export class CniRuntime {
  /** Directories searched for plugins, in order (also given to plugins as `CNI_PATH`). */
  readonly pluginDirs: readonly string[];
  /** The cache directory. */
  readonly cacheDir: string;
  /** Default limit of one plugin run, in ms. */
  readonly timeoutMs: number;
  /** Limit of a plugin's stdout, in bytes. */
  readonly maxOutputBytes: number;
  readonly #env: Readonly<Record<string, string>>;
  readonly #cache: ResultCache;
  readonly #locks = new Map<string, Promise<unknown>>();

  constructor(options: CniRuntimeOptions = {}) {
    const dirs: string[] = [];
    for (const [i, dir] of [...(options.pluginDirs ?? []), ...DEFAULT_PLUGIN_DIRS].entries()) {
      const clean = absolutePath(dir, `pluginDirs[${i}]`);
      if (clean.includes(':')) throw new InvalidArgumentError(`pluginDirs[${i}]`, `"${clean}" contains ":", the CNI_PATH separator`);
      if (!dirs.includes(clean)) dirs.push(clean);
    }
    this.pluginDirs = Object.freeze(dirs);
    this.cacheDir = absolutePath(options.cacheDir ?? DEFAULT_CACHE_DIR, 'cacheDir');
    this.timeoutMs = integer(options.timeoutMs ?? DEFAULT_TIMEOUT_MS, 'timeoutMs', 1, 86_400_000);
    this.maxOutputBytes = integer(options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES, 'maxOutputBytes', 4096, 64 << 20);
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(options.env ?? {})) {
      if (!ENV_NAME.test(k) || k.startsWith('CNI_')) throw new InvalidArgumentError(`env.${k}`, 'must be a variable name not starting with CNI_');
      if (typeof v !== 'string' || v.includes('\0')) throw new InvalidArgumentError(`env.${k}`, 'must be a string without NUL');
      env[k] = v;
    }
    this.#env = Object.freeze(env);
    this.#cache = new ResultCache(this.cacheDir);
  }

  /**
   * Finds a plugin's executable: the first regular, executable file named `type` in
   * {@link CniRuntime.pluginDirs}.
   *
   * @throws {@link CniPluginNotFoundError}
   */
  async findPlugin(type: string): Promise<string> {
    if (!isPluginType(type)) throw new InvalidArgumentError('type', `${JSON.stringify(type)} is not a valid plugin type`);
    for (const dir of this.pluginDirs) {
      const file = path.join(dir, type);
      const stat = await fs.stat(file).catch(() => undefined);
      if (stat?.isFile() && (await fs.access(file, fs.constants.X_OK).then(() => true, () => false))) return file;
    }
    throw new CniPluginNotFoundError(type, this.pluginDirs);
  }

  /**
   * Adds a container to a network: runs each plugin's ADD in order, each getting the previous
   * one's result as `prevResult`, caches the final result, and returns it (CNI 1.x model).
   * If any step fails, DEL runs over the chain to undo it, and the error is thrown.
   *
   * @throws {@link InvalidArgumentError} (bad attachment), {@link NotFoundError} (netns),
   * {@link CniPluginNotFoundError}, {@link CniAttachmentExistsError}, {@link CniPluginError},
   * {@link CniExecError}, {@link CniOutputError}, `TimeoutError`, `AbortError`.
   */
  async add(network: CniConfig, attachment: CniAttachment, options: CniCallOptions = {}): Promise<CniResult> {
    const net = this.#network(network);
    const att = validateAttachment(attachment, false);
    const run = this.#run(options);
    return this.#serialize(att.containerId, async () => {
      await this.#checkNetns(att.netns as string);
      const files = await this.#resolve(net, true);
      for (const cached of await this.#cache.list(att.containerId)) {
        if (cached.ifName === att.ifName) throw new CniAttachmentExistsError(net.name, att.containerId, att.ifName, cached.network);
      }
      let raw: JsonObject | undefined;
      let result: CniResult | undefined;
      try {
        for (const [i, plugin] of net.plugins.entries()) {
          const stdin = this.#request(net, plugin, att, raw);
          const out = await this.#invoke(files[i] as string, { plugin: plugin.type, command: 'ADD', network: net.name }, stdin, this.#attachEnv('ADD', att), run);
          ({ raw, result } = this.#parseAdd({ plugin: plugin.type, command: 'ADD', network: net.name }, out, net.cniVersion));
        }
        const entry = {
          network: net.name,
          containerId: att.containerId,
          ifName: att.ifName,
          netns: att.netns,
          args: att.args,
          capabilityArgs: att.capabilityArgs,
          config: net,
          rawResult: raw,
        };
        await this.#cache.write(entry);
        return result as CniResult;
      } catch (error) {
        // Undo with DEL, even when cancelled: leaving half an attachment is worse.
        try {
          await this.#delChain(net, files, att, raw, { timeoutMs: run.timeoutMs, signal: undefined });
        } catch (rollbackError) {
          if (typeof error === 'object' && error !== null) {
            Object.defineProperty(error, 'rollbackError', { value: rollbackError, enumerable: false, configurable: true });
          }
        }
        throw error;
      }
    });
  }

  /**
   * Checks that an attachment is still as ADD left it: runs each plugin's CHECK with the cached
   * result as `prevResult`. Does nothing when the network sets `disableCheck`. Parameters left
   * out of `attachment` (`netns`, `args`, `capabilityArgs`) are those ADD used, from the cache.
   *
   * @throws {@link NotFoundError} when there is no cached result (never added, or deleted);
   * {@link CniVersionError} for configurations older than 0.4.0; plugin errors as for ADD.
   */
  async check(network: CniConfig, attachment: CniAttachment, options: CniCallOptions = {}): Promise<void> {
    const net = this.#network(network);
    const given = validateAttachment(attachment, true);
    const run = this.#run(options);
    if (!atLeast(net.cniVersion, '0.4.0')) throw new CniVersionError(`CHECK needs CNI 0.4.0 or later; network "${net.name}" runs ${net.cniVersion}`);
    if (net.disableCheck) return;
    await this.#serialize(given.containerId, async () => {
      const cached = await this.#cache.read(net.name, given.containerId, given.ifName);
      if (cached?.rawResult === undefined) {
        throw new NotFoundError('CNI attachment', `${net.name}/${given.containerId}/${given.ifName}`);
      }
      const att = this.#complete(attachment, given, cached);
      if (att.netns === undefined) throw new InvalidArgumentError('netns', 'is required: the path of the network namespace, e.g. /run/netns/NAME');
      await this.#checkNetns(att.netns);
      const files = await this.#resolve(net, false);
      for (const [i, plugin] of net.plugins.entries()) {
        const stdin = this.#request(net, plugin, att, cached.rawResult);
        await this.#invoke(files[i] as string, { plugin: plugin.type, command: 'CHECK', network: net.name }, stdin, this.#attachEnv('CHECK', att), run);
      }
    });
  }

  /**
   * Removes a container from a network: runs each plugin's DEL in reverse order with the cached
   * ADD result as `prevResult`, then drops the cache entry. Idempotent.
   *
   * Parameters left out of `attachment` (`netns`, `args`, `capabilityArgs`) are taken from the
   * cache, so `{containerId, ifName}` is enough after a restart. `network` may be just the
   * network's name: the configuration is then read from the cache; with no cache entry there
   * is nothing known to delete and the call returns.
   */
  async del(network: CniConfig | string, attachment: CniAttachment, options: CniCallOptions = {}): Promise<void> {
    const name = typeof network === 'string' ? this.#networkName(network) : this.#network(network).name;
    const att = validateAttachment(attachment, true);
    const run = this.#run(options);
    await this.#serialize(att.containerId, async () => {
      let cached: CniCachedAttachment | undefined;
      try {
        cached = await this.#cache.read(name, att.containerId, att.ifName);
      } catch (error) {
        // A corrupt entry must not block DEL: run without prevResult (libcni does the same).
        if (!(error instanceof CniCacheError) || typeof network === 'string') throw error;
      }
      const net = typeof network === 'string' ? cached?.config : network;
      if (net === undefined) return;
      const full = this.#complete(attachment, att, cached);
      const files = await this.#resolve(net, false);
      const prev = atLeast(net.cniVersion, '0.4.0') ? cached?.rawResult : undefined;
      await this.#delChain(net, files, full, prev, run);
      await this.#cache.remove(name, att.containerId, att.ifName);
    });
  }

  /**
   * Asks a plugin which CNI versions it supports (CNI_COMMAND=VERSION). A plugin too old to know
   * VERSION reports 0.1.0, as libcni assumes.
   */
  async version(type: string, options: CniCallOptions = {}): Promise<CniVersionInfo> {
    const file = await this.findPlugin(type);
    const inv: CniInvocation = { plugin: type, command: 'VERSION', network: '' };
    // Old plugin libraries insist on these even for VERSION; libcni passes the same dummies.
    const env = { ...this.#baseEnv('VERSION'), CNI_NETNS: 'dummy', CNI_IFNAME: 'dummy' };
    let out: ExecOutcome;
    try {
      out = await this.#invoke(file, inv, JSON.stringify({ cniVersion: CURRENT_VERSION }), env, this.#run(options));
    } catch (error) {
      if (error instanceof CniPluginError && error.msg === 'unknown CNI_COMMAND: VERSION') {
        return { cniVersion: '0.1.0', supportedVersions: ['0.1.0'] };
      }
      throw error;
    }
    const text = out.stdout.toString('utf8');
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (cause) {
      throw new CniOutputError(inv, 'not JSON', text, { cause });
    }
    if (!isObject(value) || !isVersion(value['cniVersion']) || !Array.isArray(value['supportedVersions']) || !value['supportedVersions'].every(isVersion)) {
      throw new CniOutputError(inv, 'expected {"cniVersion": "X.Y.Z", "supportedVersions": [...]}', text);
    }
    return { cniVersion: value['cniVersion'], supportedVersions: Object.freeze([...value['supportedVersions']]) };
  }

  /**
   * Checks that every plugin of the network (and its IPAM plugin) exists and supports the
   * network's CNI version, as libcni's `ValidateNetworkList`. Returns the network's capabilities.
   *
   * @throws {@link CniPluginNotFoundError}, {@link CniVersionError}
   */
  async validate(network: CniConfig, options: CniCallOptions = {}): Promise<string[]> {
    const net = this.#network(network);
    await this.#resolve(net, true);
    const infos = await this.#versions(net, options);
    const lacking = [...infos].filter(([, info]) => !info.supportedVersions.includes(net.cniVersion));
    if (lacking.length > 0) {
      throw new CniVersionError(
        `network "${net.name}" uses CNI ${net.cniVersion}, which ${lacking.map(([t, i]) => `plugin "${t}" (supports ${i.supportedVersions.join(', ')})`).join(' and ')} does not support`,
      );
    }
    return net.capabilities;
  }

  /**
   * Version negotiation: returns the network set to the highest of its declared versions
   * (`cniVersion`/`cniVersions`) that vmpod and every plugin (by VERSION) support.
   *
   * @throws {@link CniVersionError} when there is none.
   */
  async negotiate(network: CniConfig, options: CniCallOptions = {}): Promise<CniConfig> {
    const net = this.#network(network);
    await this.#resolve(net, true);
    const infos = await this.#versions(net, options);
    const chosen = net.cniVersions.find((v) => [...infos.values()].every((info) => info.supportedVersions.includes(v)));
    if (chosen === undefined) {
      throw new CniVersionError(
        `network "${net.name}" declares CNI ${net.cniVersions.join(', ')}, but no version is supported by all of its plugins: ${[...infos].map(([t, i]) => `${t} supports ${i.supportedVersions.join(', ')}`).join('; ')}`,
      );
    }
    return chosen === net.cniVersion && net.cniVersions.length === 1 ? net : net.withVersion(chosen);
  }

  /**
   * Asks each plugin whether it is ready for ADD (CNI 1.1.0 STATUS). Networks of older versions
   * have no STATUS and pass.
   *
   * @throws {@link CniPluginError} with code 50 or 51 when a plugin is not available.
   */
  async status(network: CniConfig, options: CniCallOptions = {}): Promise<void> {
    const net = this.#network(network);
    if (!atLeast(net.cniVersion, '1.1.0')) return;
    const files = await this.#resolve(net, false);
    for (const [i, plugin] of net.plugins.entries()) {
      const stdin = JSON.stringify(this.#baseConfig(net, plugin));
      await this.#invoke(files[i] as string, { plugin: plugin.type, command: 'STATUS', network: net.name }, stdin, this.#baseEnv('STATUS'), this.#run(options));
    }
  }

  /**
   * Garbage collection, as libcni's `GCNetworkList`: runs DEL for every cached attachment of the
   * network that is not in `validAttachments`, then (CNI 1.1.0) each plugin's GC with
   * `cni.dev/valid-attachments`. Keeps going after errors and throws them together.
   *
   * @throws {@link CniGcError}
   */
  async gc(network: CniConfig, options: CniGcOptions = {}): Promise<void> {
    const net = this.#network(network);
    const valid = (options.validAttachments ?? []).map((a, i) => ({
      containerId: id(a.containerId, `validAttachments[${i}].containerId`),
      ifName: interfaceName(a.ifName, `validAttachments[${i}].ifName`),
    }));
    const run = this.#run(options);
    if (net.disableGC) return;
    const errors: unknown[] = [];
    const keep = new Set(valid.map((a) => `${a.containerId}\0${a.ifName}`));
    for (const cached of await this.#cache.list()) {
      if (cached.network !== net.name || keep.has(`${cached.containerId}\0${cached.ifName}`)) continue;
      try {
        await this.del(net, { containerId: cached.containerId, ifName: cached.ifName }, options);
      } catch (error) {
        errors.push(error);
      }
    }
    if (atLeast(net.cniVersion, '1.1.0')) {
      let files: string[] = [];
      try {
        files = await this.#resolve(net, false);
      } catch (error) {
        errors.push(error);
      }
      for (const [i, file] of files.entries()) {
        const plugin = net.plugins[i] as CniPluginConfig;
        const conf = {
          ...this.#baseConfig(net, plugin),
          'cni.dev/valid-attachments': valid.map((a) => ({ containerID: a.containerId, ifname: a.ifName })),
        };
        try {
          await this.#invoke(file, { plugin: plugin.type, command: 'GC', network: net.name }, JSON.stringify(conf), this.#baseEnv('GC'), run);
        } catch (error) {
          errors.push(error);
        }
      }
    }
    if (errors.length > 0) throw new CniGcError(net.name, errors);
  }

  /**
   * The cached ADD result of an attachment (typed 1.x model), or undefined when there is none.
   *
   * @throws {@link CniCacheError} when the cache entry is corrupt.
   */
  async cachedResult(network: CniConfig | string, attachment: Pick<CniAttachment, 'containerId' | 'ifName'>): Promise<CniResult | undefined> {
    const name = typeof network === 'string' ? this.#networkName(network) : this.#network(network).name;
    const cached = await this.#cache.read(name, id(attachment.containerId, 'containerId'), interfaceName(attachment.ifName, 'ifName'));
    return cached?.result;
  }

  /** Every cached attachment, or those of one container (e.g. to DEL them all after a crash). */
  async cachedAttachments(containerId?: string): Promise<CniCachedAttachment[]> {
    return this.#cache.list(containerId === undefined ? undefined : id(containerId, 'containerId'));
  }

  // ---------------------------------------------------------------------------------------

  /** Fills what the caller left out of an attachment with what ADD used (from the cache). */
  #complete(given: CniAttachment, valid: ValidAttachment, cached: CniCachedAttachment | undefined): ValidAttachment {
    return {
      containerId: valid.containerId,
      ifName: valid.ifName,
      netns: valid.netns ?? cached?.netns,
      args: given.args === undefined ? (cached?.args ?? []) : valid.args,
      capabilityArgs: given.capabilityArgs === undefined ? (cached?.capabilityArgs ?? {}) : valid.capabilityArgs,
    };
  }

  #network(network: unknown): CniConfig {
    if (!(network instanceof CniConfig)) {
      throw new InvalidArgumentError('network', 'must be a CniConfig (use CniConfig.fromObject, parse, loadFile or loadDir)');
    }
    return network;
  }

  #networkName(name: string): string {
    if (!isNetworkName(name)) throw new InvalidArgumentError('network', `${JSON.stringify(name)} is not a valid network name`);
    return name;
  }

  #run(options: CniCallOptions): Run {
    const timeoutMs = options.timeoutMs === undefined ? this.timeoutMs : integer(options.timeoutMs, 'timeoutMs', 1, 86_400_000);
    return { timeoutMs, signal: options.signal };
  }

  /** Runs `fn` after every earlier operation on the same container has finished. */
  async #serialize<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.#locks.get(key) ?? Promise.resolve();
    const current = previous.then(fn, fn);
    const tail = current.catch(() => undefined);
    this.#locks.set(key, tail);
    try {
      return await current;
    } finally {
      if (this.#locks.get(key) === tail) this.#locks.delete(key);
    }
  }

  async #checkNetns(netns: string): Promise<void> {
    let type: number;
    try {
      type = (await fs.statfs(netns)).type;
    } catch (cause) {
      throw new NotFoundError('network namespace', netns, { cause });
    }
    if (type !== NSFS_MAGIC) throw new InvalidArgumentError('netns', `"${netns}" is not a network namespace (e.g. /run/netns/NAME or /proc/PID/ns/net)`);
  }

  /** Finds every plugin of the chain (and, with `ipam`, each IPAM plugin) before anything runs. */
  async #resolve(net: CniConfig, ipam: boolean): Promise<string[]> {
    const files: string[] = [];
    for (const plugin of net.plugins) {
      files.push(await this.findPlugin(plugin.type));
      const ipamType = isObject(plugin['ipam']) ? plugin['ipam']['type'] : undefined;
      if (ipam && typeof ipamType === 'string') await this.findPlugin(ipamType);
    }
    return files;
  }

  async #versions(net: CniConfig, options: CniCallOptions): Promise<Map<string, CniVersionInfo>> {
    const infos = new Map<string, CniVersionInfo>();
    for (const plugin of net.plugins) {
      const ipamType = isObject(plugin['ipam']) ? plugin['ipam']['type'] : undefined;
      for (const type of typeof ipamType === 'string' ? [plugin.type, ipamType] : [plugin.type]) {
        if (!infos.has(type)) infos.set(type, await this.version(type, options));
      }
    }
    return infos;
  }

  #baseEnv(command: CniCommand): Record<string, string> {
    return { PATH: process.env['PATH'] ?? DEFAULT_PATH, ...this.#env, CNI_COMMAND: command, CNI_PATH: this.pluginDirs.join(':') };
  }

  #attachEnv(command: CniCommand, att: ValidAttachment): Record<string, string> {
    const env: Record<string, string> = { ...this.#baseEnv(command), CNI_CONTAINERID: att.containerId, CNI_IFNAME: att.ifName };
    if (att.netns !== undefined) env['CNI_NETNS'] = att.netns;
    if (att.args.length > 0) env['CNI_ARGS'] = formatCniArgs(att.args);
    return env;
  }

  /** The plugin's configuration with `cniVersion` and `name` of the network, without `capabilities`. */
  #baseConfig(net: CniConfig, plugin: CniPluginConfig): JsonObject {
    const conf: JsonObject = { cniVersion: net.cniVersion, name: net.name };
    for (const [key, value] of Object.entries(plugin)) {
      if (key !== 'capabilities' && key !== 'cniVersion' && key !== 'name') conf[key] = value;
    }
    return conf;
  }

  /** The request configuration of spec section 3: base config, `runtimeConfig`, `prevResult`. */
  #request(net: CniConfig, plugin: CniPluginConfig, att: ValidAttachment, prevResult: JsonObject | undefined): string {
    const conf = this.#baseConfig(net, plugin);
    const runtimeConfig: JsonObject = {};
    for (const [cap, enabled] of Object.entries(plugin.capabilities ?? {})) {
      if (enabled && att.capabilityArgs[cap] !== undefined) runtimeConfig[cap] = att.capabilityArgs[cap];
    }
    if (Object.keys(runtimeConfig).length > 0) conf['runtimeConfig'] = runtimeConfig;
    if (prevResult !== undefined) conf['prevResult'] = prevResult;
    return JSON.stringify(conf);
  }

  async #delChain(net: CniConfig, files: readonly string[], att: ValidAttachment, prev: JsonObject | undefined, run: Run): Promise<void> {
    for (let i = net.plugins.length - 1; i >= 0; i--) {
      const plugin = net.plugins[i] as CniPluginConfig;
      const stdin = this.#request(net, plugin, att, prev);
      await this.#invoke(files[i] as string, { plugin: plugin.type, command: 'DEL', network: net.name }, stdin, this.#attachEnv('DEL', att), run);
    }
  }

  /** Runs one plugin; a non-zero exit becomes {@link CniPluginError} or {@link CniExecError}. */
  async #invoke(file: string, inv: CniInvocation, stdin: string, env: Record<string, string>, run: Run): Promise<ExecOutcome> {
    const what = `CNI plugin "${inv.plugin}" (${inv.command}${inv.network === '' ? '' : ` of network "${inv.network}"`})`;
    let out: ExecOutcome;
    try {
      out = await execPlugin({
        file,
        env,
        stdin,
        timeoutMs: run.timeoutMs,
        signal: run.signal,
        maxStdoutBytes: this.maxOutputBytes,
        maxStderrBytes: MAX_STDERR_BYTES,
        what,
      });
    } catch (error) {
      if (error instanceof SpawnError) throw new CniExecError(inv, error.message, null, null, '', { cause: error.cause });
      throw error;
    }
    if (out.overflow) throw new CniOutputError(inv, `more than ${this.maxOutputBytes} bytes of output`, out.stdout.toString('utf8'));
    if (out.exitCode === 0) return out;
    const stdout = out.stdout.toString('utf8');
    const reported = parseErrorResult(stdout) ?? parseErrorResult(out.stderr);
    if (reported !== undefined) throw new CniPluginError(inv, reported.code, reported.msg, reported.details, out.stderr);
    const how = out.signal !== null ? `was killed by ${out.signal}` : `exited with status ${out.exitCode} without a CNI error result`;
    throw new CniExecError(inv, how, out.exitCode, out.signal, out.stderr.trim() === '' ? stdout : out.stderr);
  }

  #parseAdd(inv: CniInvocation, out: ExecOutcome, configVersion: string): { raw: JsonObject; result: CniResult } {
    const text = out.stdout.toString('utf8');
    if (text.trim() === '') throw new CniOutputError(inv, 'ADD printed no result', text);
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (cause) {
      throw new CniOutputError(inv, 'not JSON', text, { cause });
    }
    // An error result with exit status 0 is still an error.
    if (isObject(value) && value['interfaces'] === undefined && value['ips'] === undefined) {
      const reported = parseErrorResult(text);
      if (reported !== undefined && reported.msg !== '') throw new CniPluginError(inv, reported.code, reported.msg, reported.details, out.stderr);
    }
    try {
      return parseResult(value, configVersion);
    } catch (error) {
      if (error instanceof ResultFormatError) throw new CniOutputError(inv, error.message, text, { cause: error });
      throw error;
    }
  }
}
