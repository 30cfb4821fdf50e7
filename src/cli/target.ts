/**
 * How CLI commands name a container: `SANDBOX` (its container of the same id, or its only
 * container) or `SANDBOX/CONTAINER`.
 *
 * @internal
 * @module
 */
import { Sandbox } from '../sandbox/sandbox.js';
import type { Container } from '../container/container.js';
import { NotFoundError } from '../errors.js';
import * as validate from '../validate.js';
import { UsageError } from './io.js';
import { stateError } from '../sandbox/state-machine.js';

/** Splits `SANDBOX[/CONTAINER]` and checks both ids. */
export function parseTarget(value: string | undefined): { sandbox: string; container?: string } {
  if (value === undefined) throw new UsageError('give a sandbox id');
  const slash = value.indexOf('/');
  if (slash < 0) return { sandbox: validate.id(value, 'ID') };
  return { sandbox: validate.id(value.slice(0, slash), 'ID'), container: validate.id(value.slice(slash + 1), 'CONTAINER') };
}

/**
 * Attaches to the sandbox and finds the container a target names. The sandbox must run: one
 * that does not fails at once with an error naming `action` (the command, e.g. `exec`) and
 * what to do (start it, resume it), rather than waiting for a guest that cannot answer.
 */
export async function resolveContainer(value: string | undefined, action: string): Promise<{ sandbox: Sandbox; container: Container }> {
  const target = parseTarget(value);
  const sandbox = await Sandbox.attach(target.sandbox);
  try {
    if (sandbox.state !== 'running') throw stateError('sandbox', sandbox.label, sandbox.state, 'running', { action });
    let id = target.container;
    if (id === undefined) {
      const all = await sandbox.containers();
      const same = all.find((c) => c.id === target.sandbox);
      if (same) id = same.id;
      else if (all.length === 1) id = all[0]!.id;
      else if (all.length === 0) throw new NotFoundError('container in sandbox', target.sandbox);
      else throw new UsageError(`sandbox "${target.sandbox}" has ${all.length} containers: name one as ${target.sandbox}/CONTAINER`);
    }
    return { sandbox, container: await sandbox.container(id) };
  } catch (error) {
    sandbox.detach();
    throw error;
  }
}
