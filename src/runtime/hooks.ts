/**
 * The runtime spec's host-side hooks: `prestart` and `createRuntime` (after the container is
 * created, before `create` returns), `poststart` (after `start`), `poststop` (after `delete`).
 * Each runs on the host with the container's state JSON on its stdin, with its `timeout` (in
 * seconds). `createContainer` and `startContainer` hooks run in the container's namespaces,
 * which are in the VM: they are refused at create (docs/oci-runtime.md).
 *
 * @module
 */
import { spawn } from 'node:child_process';
import { RuntimeError } from './log.js';
import type { Hook, OciState } from './state.js';

/** The hooks of a spec, checked. */
export interface SpecHooks {
  prestart: Hook[];
  createRuntime: Hook[];
  poststart: Hook[];
  poststop: Hook[];
}

function checkHook(value: unknown, where: string): Hook {
  const h = value as Record<string, unknown> | null;
  if (typeof h !== 'object' || h === null || typeof h['path'] !== 'string' || !h['path'].startsWith('/')) throw new RuntimeError(`${where}: "path" must be an absolute path`);
  const strings = (v: unknown): v is string[] => Array.isArray(v) && v.every((s) => typeof s === 'string');
  if (h['args'] !== undefined && !strings(h['args'])) throw new RuntimeError(`${where}: "args" must be an array of strings`);
  if (h['env'] !== undefined && !strings(h['env'])) throw new RuntimeError(`${where}: "env" must be an array of strings`);
  if (h['timeout'] !== undefined && (typeof h['timeout'] !== 'number' || !Number.isInteger(h['timeout']) || h['timeout'] <= 0)) throw new RuntimeError(`${where}: "timeout" must be a positive integer`);
  return h as unknown as Hook;
}

/** Reads `spec.hooks`; refuses those that would run inside the container (the VM). */
export function specHooks(spec: { hooks?: Record<string, unknown> }): SpecHooks {
  const hooks = spec.hooks ?? {};
  for (const kind of ['createContainer', 'startContainer']) {
    const list = hooks[kind];
    if (Array.isArray(list) && list.length > 0) {
      throw new RuntimeError(`${kind} hooks are not supported: they run in the container's namespaces, which are inside the VM (docs/oci-runtime.md)`);
    }
  }
  const read = (kind: keyof SpecHooks): Hook[] => {
    const list = hooks[kind];
    if (list === undefined) return [];
    if (!Array.isArray(list)) throw new RuntimeError(`hooks.${kind} must be an array`);
    return list.map((h, i) => checkHook(h, `hooks.${kind}[${i}]`));
  };
  return { prestart: read('prestart'), createRuntime: read('createRuntime'), poststart: read('poststart'), poststop: read('poststop') };
}

/** Runs one hook with `state` on its stdin; rejects with RuntimeError when it fails or times out. */
export function runHook(hook: Hook, state: OciState, kind: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const [argv0, ...args] = hook.args && hook.args.length > 0 ? hook.args : [hook.path];
    const child = spawn(hook.path, args, { argv0: argv0 ?? hook.path, env: Object.fromEntries((hook.env ?? []).map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)])), stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    let timer: NodeJS.Timeout | undefined;
    if (hook.timeout !== undefined) {
      timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new RuntimeError(`${kind} hook ${hook.path} timed out after ${hook.timeout} s`));
      }, hook.timeout * 1000);
    }
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      if (stderr.length < 4096) stderr += d;
    });
    child.stdin!.on('error', () => undefined);
    child.stdin!.end(JSON.stringify(state));
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(new RuntimeError(`${kind} hook ${hook.path}: ${error.message}`, { cause: error }));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new RuntimeError(`${kind} hook ${hook.path} failed (${signal ?? `exit status ${code}`})${stderr.trim() === '' ? '' : `: ${stderr.trim()}`}`));
    });
  });
}

/** Runs `hooks` in order; stops at the first failure (prestart, createRuntime: the create fails). */
export async function runHooks(hooks: readonly Hook[], state: OciState, kind: string): Promise<void> {
  for (const hook of hooks) await runHook(hook, state, kind);
}

/**
 * Runs every one of `hooks` in order, whatever each does, and hands each failure to `warn`
 * (poststart, poststop: runtime.md says a failing one is a warning and the remaining hooks and
 * the lifecycle go on).
 */
export async function runHooksWarning(hooks: readonly Hook[], state: OciState, kind: string, warn: (error: unknown) => void): Promise<void> {
  for (const hook of hooks) {
    try {
      await runHook(hook, state, kind);
    } catch (error) {
      warn(error);
    }
  }
}
