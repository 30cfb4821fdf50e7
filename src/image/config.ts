/**
 * The image config (OCI image-spec config.md, which Docker's image JSON matches): the parsed
 * and checked form {@link ImageConfig}.
 *
 * @module
 */

/** The execution parameters of an image (the config's `config` object), as the spec names them. */
export interface ImageExecConfig {
  User?: string;
  Env?: string[];
  Entrypoint?: string[];
  Cmd?: string[];
  WorkingDir?: string;
  Labels?: Record<string, string>;
  StopSignal?: string;
  /** Keys like `80/tcp`; values are empty objects. */
  ExposedPorts?: Record<string, object>;
  /** Keys are absolute paths; values are empty objects. */
  Volumes?: Record<string, object>;
}

/** An image config, checked: what vmpod reads of it (other fields are kept in `raw`). */
export interface ImageConfig {
  architecture: string;
  os: string;
  variant?: string;
  created?: string;
  author?: string;
  config: ImageExecConfig;
  rootfs: { type: 'layers'; diff_ids: string[] };
  /** The whole JSON object as parsed (history and fields vmpod does not read included). */
  raw: Record<string, unknown>;
}

/** Most layers an image may have (overlayfs stacks far fewer; Docker refuses more than 127). */
export const MAX_LAYERS = 500;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isCleanString(v: unknown): v is string {
  return typeof v === 'string' && !v.includes('\0');
}

/**
 * Checks a parsed image config and returns it typed. `null` fields (Docker writes
 * `"Entrypoint": null`) count as absent. `isDigest` is passed in by the caller that checks
 * diff_ids (kept out of this module's imports).
 */
export function checkImageConfig(value: Record<string, unknown>, fail: (problem: string) => never, isDigest: (v: unknown) => boolean): ImageConfig {
  const { architecture, os } = value;
  if (!isCleanString(architecture) || architecture.length === 0) fail('config: "architecture" must be a non-empty string');
  if (!isCleanString(os) || os.length === 0) fail('config: "os" must be a non-empty string');
  const rootfs = value['rootfs'];
  if (!isRecord(rootfs) || rootfs['type'] !== 'layers' || !Array.isArray(rootfs['diff_ids'])) {
    fail('config: "rootfs" must be {"type": "layers", "diff_ids": [...]}');
  }
  const diffIds = (rootfs as Record<string, unknown>)['diff_ids'] as unknown[];
  if (diffIds.length > MAX_LAYERS) fail(`config: ${diffIds.length} diff_ids, more than the ${MAX_LAYERS} vmpod accepts`);
  diffIds.forEach((d, i) => {
    if (!isDigest(d)) fail(`config: rootfs.diff_ids[${i}] is not a sha256 or sha512 digest`);
  });
  const exec: ImageExecConfig = {};
  const c = value['config'] ?? {};
  if (!isRecord(c)) fail('config: "config" must be an object');
  const given = c as Record<string, unknown>;
  const strings = (key: 'Env' | 'Entrypoint' | 'Cmd'): void => {
    const v = given[key];
    if (v === undefined || v === null) return;
    if (!Array.isArray(v) || !v.every(isCleanString)) fail(`config: "config.${key}" must be an array of strings`);
    exec[key] = [...(v as string[])];
  };
  const text = (key: 'User' | 'WorkingDir' | 'StopSignal'): void => {
    const v = given[key];
    if (v === undefined || v === null) return;
    if (!isCleanString(v)) fail(`config: "config.${key}" must be a string`);
    if (v !== '') exec[key] = v;
  };
  const set = (key: 'ExposedPorts' | 'Volumes'): void => {
    const v = given[key];
    if (v === undefined || v === null) return;
    if (!isRecord(v)) fail(`config: "config.${key}" must be an object`);
    exec[key] = Object.fromEntries(Object.keys(v).map((k) => [k, {}]));
  };
  strings('Env');
  strings('Entrypoint');
  strings('Cmd');
  text('User');
  text('WorkingDir');
  text('StopSignal');
  set('ExposedPorts');
  set('Volumes');
  if (exec.Env?.some((e) => !e.includes('='))) fail('config: "config.Env" entries must be KEY=VALUE');
  const labels = given['Labels'];
  if (labels !== undefined && labels !== null) {
    if (!isRecord(labels) || !Object.values(labels).every(isCleanString)) fail('config: "config.Labels" must map strings to strings');
    exec.Labels = { ...(labels as Record<string, string>) };
  }
  const result: ImageConfig = {
    architecture: architecture as string,
    os: os as string,
    config: exec,
    rootfs: { type: 'layers', diff_ids: diffIds as string[] },
    raw: value,
  };
  for (const key of ['variant', 'created', 'author'] as const) {
    const v = value[key];
    if (isCleanString(v)) result[key] = v;
  }
  return result;
}
