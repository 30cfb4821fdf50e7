/**
 * CNI network configurations: `.conflist` files (a network with a chain of plugins) and the
 * older single-plugin `.conf` files, loaded from a directory, a file, JSON text or an object,
 * and validated before any plugin runs.
 *
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { NotFoundError } from '../../errors.js';
import { CniConfigError, type CniConfigLocation } from './errors.js';
import { CURRENT_VERSION, SUPPORTED_VERSIONS, compareVersions, isSupportedVersion, isVersion } from './version.js';
import { jsonErrorOffset } from './json-offset.js';

/** A JSON object. */
export type JsonObject = { [key: string]: unknown };

/**
 * One plugin of a chain: its `type` (the executable's name), optional `capabilities`, and any
 * plugin-specific keys, which are passed to the plugin unchanged.
 */
export interface CniPluginConfig {
  readonly type: string;
  readonly capabilities?: Readonly<Record<string, boolean>>;
  readonly [key: string]: unknown;
}

/** Network names: as the CNI spec says, and short enough for a cache file name. */
const NETWORK_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/u;
/** Plugin types are executable names looked up in the plugin directories: no separators. */
const PLUGIN_TYPE = /^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$/u;
/** Keys the runtime generates at execution time; a configuration must not set them. */
const RESERVED_KEYS = ['runtimeConfig', 'prevResult'];
/** Bigger configuration files are rejected without being parsed. */
const MAX_CONFIG_BYTES = 1 << 20;
/** File extensions {@link CniConfig.loadDir} reads, as libcni and containerd do. */
const EXTENSIONS = ['.conf', '.conflist', '.json'];

/** Checks a network name (the `name` of a configuration). */
export function isNetworkName(value: unknown): value is string {
  return typeof value === 'string' && NETWORK_NAME.test(value);
}

/** Checks a plugin `type` (also used for `ipam.type`): a plain executable name. */
export function isPluginType(value: unknown): value is string {
  return typeof value === 'string' && PLUGIN_TYPE.test(value) && value !== '..';
}

function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}

/** Turns a JSON.parse error into a line and column of `text`. */
function syntaxLocation(error: unknown, text: string): { line: number; column: number; reason: string } {
  const message = error instanceof Error ? error.message : String(error);
  const offset = jsonErrorOffset(text) ?? text.length;
  const before = text.slice(0, offset);
  const line = before.split('\n').length;
  const column = offset - before.lastIndexOf('\n');
  // Keep V8's reason, without its position or its quote of the whole text.
  const reason = message
    .replace(/\s*in JSON at position \d+.*$/u, '')
    .replace(/\s*\(line \d+ column \d+\)/u, '')
    .replace(/, ".*" is not valid JSON$/su, '');
  return { line, column, reason };
}

/** Parses JSON text, or throws {@link CniConfigError} naming the file, line and column. */
function parseJson(text: string, file: string | undefined): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (cause) {
    const { line, column, reason } = syntaxLocation(cause, text);
    throw new CniConfigError('', `malformed JSON at line ${line}, column ${column}: ${reason}`, { file, line, column }, { cause });
  }
}

function readBool(obj: JsonObject, key: string, where: CniConfigLocation): boolean {
  const value = obj[key];
  if (value === undefined || value === false || value === 'false') return false;
  if (value === true || value === 'true') return true;
  throw new CniConfigError(key, `must be true or false, not ${JSON.stringify(value)}`, where);
}

/** Validates one plugin object of a chain and returns a frozen copy. */
function checkPlugin(value: unknown, at: string, where: CniConfigLocation): CniPluginConfig {
  if (!isObject(value)) throw new CniConfigError(at, 'a plugin configuration must be a JSON object', where);
  if (value['type'] === undefined) throw new CniConfigError(`${at}.type`, 'is missing: every plugin needs a "type"', where);
  if (!isPluginType(value['type'])) {
    throw new CniConfigError(
      `${at}.type`,
      `${JSON.stringify(value['type'])} is not a valid plugin type: use an executable's file name (letters, digits, "_", ".", "+", "-"; no "/")`,
      where,
    );
  }
  const caps = value['capabilities'];
  if (caps !== undefined && (!isObject(caps) || Object.values(caps).some((c) => typeof c !== 'boolean'))) {
    throw new CniConfigError(`${at}.capabilities`, 'must be an object of booleans, e.g. {"portMappings": true}', where);
  }
  const ipam = value['ipam'];
  if (ipam !== undefined) {
    if (!isObject(ipam)) throw new CniConfigError(`${at}.ipam`, 'must be a JSON object', where);
    if (ipam['type'] !== undefined && !isPluginType(ipam['type'])) {
      throw new CniConfigError(`${at}.ipam.type`, `${JSON.stringify(ipam['type'])} is not a valid plugin type`, where);
    }
  }
  for (const key of Object.keys(value)) {
    if (RESERVED_KEYS.includes(key) || key.startsWith('cni.dev/')) {
      throw new CniConfigError(`${at}.${key}`, 'is reserved: the runtime sets it at execution time', where);
    }
  }
  return deepFreeze(structuredClone(value) as CniPluginConfig);
}

/** Picks the version to run: the highest one of `cniVersion` and `cniVersions` that vmpod supports. */
function selectVersions(obj: JsonObject, where: CniConfigLocation): string[] {
  const declared: { value: unknown; at: string }[] = [];
  if (obj['cniVersion'] !== undefined) declared.push({ value: obj['cniVersion'], at: 'cniVersion' });
  const list = obj['cniVersions'];
  if (list !== undefined) {
    if (!Array.isArray(list)) throw new CniConfigError('cniVersions', 'must be a list of version strings', where);
    list.forEach((value, i) => declared.push({ value, at: `cniVersions[${i}]` }));
  }
  if (declared.length === 0) throw new CniConfigError('cniVersion', 'is missing', where);
  const usable = new Set<string>();
  for (const { value, at } of declared) {
    if (!isVersion(value)) throw new CniConfigError(at, `${JSON.stringify(value)} is not a version (expected MAJOR.MINOR.PATCH)`, where);
    if (isSupportedVersion(value)) usable.add(value);
  }
  if (usable.size === 0) {
    const asked = declared.map((d) => JSON.stringify(d.value)).join(', ');
    throw new CniConfigError(
      list === undefined ? 'cniVersion' : 'cniVersions',
      `${asked} ${declared.length === 1 ? 'is' : 'are'} not supported (vmpod runs CNI ${SUPPORTED_VERSIONS.join(', ')})`,
      where,
    );
  }
  return [...usable].sort((a, b) => compareVersions(b, a));
}

/**
 * A validated CNI network configuration: a named chain of plugins and the CNI version to run
 * it with. Immutable; make one with {@link CniConfig.loadDir}, {@link CniConfig.loadFile},
 * {@link CniConfig.load}, {@link CniConfig.parse} or {@link CniConfig.fromObject}.
 *
 * A single-plugin `.conf` becomes a list of one plugin, as libcni does.
 */
export class CniConfig {
  /** The network's name (`name`). */
  readonly name: string;
  /** The CNI version plugins are run with: the highest supported one the configuration declares. */
  readonly cniVersion: string;
  /** Every supported version the configuration declares, highest first (for negotiation). */
  readonly cniVersions: readonly string[];
  /** `disableCheck`: CHECK does nothing for this network. */
  readonly disableCheck: boolean;
  /** `disableGC`: GC does nothing for this network. */
  readonly disableGC: boolean;
  /** The plugin chain, in ADD order. */
  readonly plugins: readonly CniPluginConfig[];
  /** The file it was loaded from, if any. */
  readonly source: string | undefined;
  /** Other top-level keys, kept so that {@link CniConfig.toJSON} round-trips. */
  readonly #extra: JsonObject;

  private constructor(fields: {
    name: string;
    versions: string[];
    disableCheck: boolean;
    disableGC: boolean;
    plugins: CniPluginConfig[];
    source: string | undefined;
    extra: JsonObject;
  }) {
    this.name = fields.name;
    this.cniVersions = Object.freeze(fields.versions);
    this.cniVersion = fields.versions[0] ?? CURRENT_VERSION;
    this.disableCheck = fields.disableCheck;
    this.disableGC = fields.disableGC;
    this.plugins = Object.freeze(fields.plugins);
    this.source = fields.source;
    this.#extra = deepFreeze(fields.extra);
    Object.freeze(this);
  }

  /**
   * Builds a configuration from an object: a configuration list (with `plugins`) or a single
   * plugin configuration (with `type`), which becomes a list of one.
   *
   * @param value - The parsed JSON.
   * @param source - Where it came from, for error messages.
   * @throws {@link CniConfigError} naming the offending field.
   */
  static fromObject(value: unknown, source?: string): CniConfig {
    const where: CniConfigLocation = { file: source };
    if (!isObject(value)) throw new CniConfigError('', 'a network configuration must be a JSON object', where);
    let obj: JsonObject;
    try {
      obj = JSON.parse(JSON.stringify(value)) as JsonObject; // a JSON-only deep copy
    } catch (cause) {
      throw new CniConfigError('', 'is not serializable as JSON', where, { cause });
    }
    return obj['plugins'] === undefined && obj['type'] !== undefined
      ? CniConfig.#fromSingle(obj, where)
      : CniConfig.#fromList(obj, where, []);
  }

  /**
   * Parses JSON text of a `.conflist` (or of a `.conf` when `kind` is `'conf'`).
   *
   * @throws {@link CniConfigError}, for malformed JSON with the line and column.
   */
  static parse(text: string, source?: string, kind: 'conflist' | 'conf' | 'auto' = 'auto'): CniConfig {
    const where: CniConfigLocation = { file: source };
    const value = parseJson(text, source);
    if (kind === 'auto') return CniConfig.fromObject(value, source);
    if (!isObject(value)) throw new CniConfigError('', 'a network configuration must be a JSON object', where);
    if (kind === 'conf') {
      if (value['plugins'] !== undefined) {
        throw new CniConfigError('plugins', 'a .conf file holds one plugin; name a configuration list ".conflist"', where);
      }
      return CniConfig.#fromSingle(value, where);
    }
    return CniConfig.#fromList(value, where, []);
  }

  /**
   * Loads one file: `.conflist` as a configuration list, `.conf` or `.json` as a single plugin.
   * A list may take more plugins from `DIR/NAME/*.conf` next to it (CNI 1.1), unless it sets
   * `loadOnlyInlinedPlugins`.
   */
  static async loadFile(file: string): Promise<CniConfig> {
    const text = await readConfigFile(file);
    if (path.extname(file) !== '.conflist') return CniConfig.parse(text, file, 'conf');
    const where: CniConfigLocation = { file };
    const value = parseJson(text, file);
    if (!isObject(value)) throw new CniConfigError('', 'a network configuration must be a JSON object', where);
    const extra: CniPluginConfig[] = [];
    if (!readBool(value, 'loadOnlyInlinedPlugins', where) && isNetworkName(value['name'])) {
      const dir = path.join(path.dirname(file), value['name']);
      for (const pluginFile of (await listConfigFiles(dir, ['.conf'])) ?? []) {
        const pluginValue = parseJson(await readConfigFile(pluginFile), pluginFile);
        extra.push(checkPlugin(pluginValue, 'plugin', { file: pluginFile }));
      }
    }
    return CniConfig.#fromList(value, where, extra);
  }

  /**
   * Loads every `.conf`, `.conflist` and `.json` file of a directory, sorted by file name as
   * libcni does. Two files defining the same network name are an error.
   *
   * @throws {@link NotFoundError} when the directory does not exist; {@link CniConfigError}.
   */
  static async loadDir(dir: string): Promise<CniConfig[]> {
    const files = await listConfigFiles(dir, EXTENSIONS);
    if (files === undefined) throw new NotFoundError('CNI configuration directory', dir);
    const seen = new Map<string, string>();
    const configs: CniConfig[] = [];
    for (const file of files) {
      const config = await CniConfig.loadFile(file);
      const first = seen.get(config.name);
      if (first !== undefined) {
        throw new CniConfigError('name', `network "${config.name}" is already defined by ${first}`, { file });
      }
      seen.set(config.name, file);
      configs.push(config);
    }
    return configs;
  }

  /** Loads the network called `name` from a directory (see {@link CniConfig.loadDir}). */
  static async load(dir: string, name: string): Promise<CniConfig> {
    const found = (await CniConfig.loadDir(dir)).find((c) => c.name === name);
    if (found === undefined) throw new NotFoundError('CNI network', `${name}" in "${dir}`);
    return found;
  }

  static #fromSingle(obj: JsonObject, where: CniConfigLocation): CniConfig {
    // A .conf is one plugin that also carries the network's name and version.
    return CniConfig.#fromList({ name: obj['name'], cniVersion: obj['cniVersion'], plugins: [obj] }, where, []);
  }

  static #fromList(obj: JsonObject, where: CniConfigLocation, more: CniPluginConfig[]): CniConfig {
    if (obj['name'] === undefined) throw new CniConfigError('name', 'is missing', where);
    if (!isNetworkName(obj['name'])) {
      throw new CniConfigError(
        'name',
        `${JSON.stringify(obj['name'])} is not a valid network name: 1-128 characters of [A-Za-z0-9_.-], starting with a letter or digit`,
        where,
      );
    }
    const versions = selectVersions(obj, where);
    const disableCheck = readBool(obj, 'disableCheck', where);
    const disableGC = readBool(obj, 'disableGC', where);
    const onlyInlined = readBool(obj, 'loadOnlyInlinedPlugins', where);
    const rawList = obj['plugins'];
    if (rawList === undefined && onlyInlined) throw new CniConfigError('plugins', 'is missing while loadOnlyInlinedPlugins is true', where);
    if (rawList !== undefined && !Array.isArray(rawList)) throw new CniConfigError('plugins', 'must be a list of plugin configurations', where);
    const list: unknown[] = Array.isArray(rawList) ? rawList : [];
    const plugins = list.map((p, i) => checkPlugin(p, `plugins[${i}]`, where));
    plugins.push(...more);
    if (plugins.length === 0) throw new CniConfigError('plugins', 'is empty: a network needs at least one plugin', where);
    const extra: JsonObject = {};
    for (const [key, value] of Object.entries(obj)) {
      if (!['name', 'cniVersion', 'cniVersions', 'plugins', 'disableCheck', 'disableGC', 'loadOnlyInlinedPlugins'].includes(key)) {
        extra[key] = value;
      }
    }
    return new CniConfig({ name: obj['name'], versions, disableCheck, disableGC, plugins, source: where.file, extra });
  }

  /** The capabilities any plugin of the chain enables, e.g. `['portMappings', 'bandwidth']`. */
  get capabilities(): string[] {
    const caps = new Set<string>();
    for (const p of this.plugins) {
      for (const [cap, on] of Object.entries(p.capabilities ?? {})) if (on) caps.add(cap);
    }
    return [...caps].sort();
  }

  /** A copy that runs with `version` (one of {@link CniConfig.cniVersions}); used by negotiation. */
  withVersion(version: string): CniConfig {
    if (!this.cniVersions.includes(version)) {
      throw new CniConfigError('cniVersion', `"${version}" is not one of this network's versions (${this.cniVersions.join(', ')})`, {
        file: this.source,
      });
    }
    return new CniConfig({
      name: this.name,
      versions: [version],
      disableCheck: this.disableCheck,
      disableGC: this.disableGC,
      plugins: [...this.plugins],
      source: this.source,
      extra: this.#extra,
    });
  }

  /**
   * The configuration list as JSON (a `.conflist`): what the result cache stores, so DEL can run
   * from the cache alone. Parsing it gives back an equal configuration.
   */
  toJSON(): JsonObject {
    const out: JsonObject = { cniVersion: this.cniVersion, name: this.name };
    if (this.cniVersions.length > 1) out['cniVersions'] = [...this.cniVersions];
    if (this.disableCheck) out['disableCheck'] = true;
    if (this.disableGC) out['disableGC'] = true;
    Object.assign(out, structuredClone(this.#extra));
    out['plugins'] = structuredClone(this.plugins);
    return out;
  }
}

/** Lists config files of `dir` with the given extensions, sorted bytewise; undefined if `dir` is missing. */
async function listConfigFiles(dir: string, extensions: string[]): Promise<string[] | undefined> {
  let entries;
  try {
    entries = await fs.readdir(dir, { withFileTypes: true });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  const files: string[] = [];
  for (const entry of entries) {
    if (!extensions.includes(path.extname(entry.name))) continue;
    const file = path.join(dir, entry.name);
    // Symlinks count when they point at a regular file (libcni skips only directories).
    if (entry.isFile() || (entry.isSymbolicLink() && (await fs.stat(file).catch(() => undefined))?.isFile())) files.push(file);
  }
  return files.sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
}

async function readConfigFile(file: string): Promise<string> {
  const handle = await fs.open(file, 'r');
  try {
    const { size } = await handle.stat();
    if (size > MAX_CONFIG_BYTES) throw new CniConfigError('', `is ${size} bytes; configurations are limited to ${MAX_CONFIG_BYTES}`, { file });
    return await handle.readFile('utf8');
  } finally {
    await handle.close();
  }
}
