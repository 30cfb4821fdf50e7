/**
 * Attachment parameters (container id, netns, interface name, CNI_ARGS, capability args):
 * their types and their validation, done before any plugin runs.
 *
 * @module
 */
import { InvalidArgumentError } from '../../errors.js';
import { absolutePath, id, interfaceName } from '../../validate.js';
import type { JsonObject } from './config.js';

/**
 * Who is attached to a network, and how. An attachment is identified by (network name,
 * `containerId`, `ifName`).
 */
export interface CniAttachment {
  /** `CNI_CONTAINERID`: 1-64 characters of [A-Za-z0-9_.-], starting with a letter or digit. */
  readonly containerId: string;
  /** `CNI_IFNAME`: the interface to create in the netns, e.g. `eth0`. */
  readonly ifName: string;
  /**
   * `CNI_NETNS`: absolute path of the network namespace, e.g. `/run/netns/NAME`. Required by
   * ADD and CHECK; optional for DEL, which then uses the cached one (or none).
   */
  readonly netns?: string;
  /** `CNI_ARGS`: extra `KEY=VALUE` pairs, e.g. `{ IgnoreUnknown: '1' }`. */
  readonly args?: Readonly<Record<string, string>> | readonly (readonly [string, string])[];
  /**
   * Capability arguments (CNI conventions: `portMappings`, `bandwidth`, `mac`, `ips`, ...).
   * Each plugin gets, as `runtimeConfig`, the ones its `capabilities` enable.
   */
  readonly capabilityArgs?: Readonly<Record<string, unknown>>;
}

/** An attachment after validation. */
export interface ValidAttachment {
  readonly containerId: string;
  readonly ifName: string;
  readonly netns: string | undefined;
  readonly args: readonly (readonly [string, string])[];
  readonly capabilityArgs: JsonObject;
}

const ARG_KEY = /^[A-Za-z0-9_]{1,64}$/u;
// Plugins split CNI_ARGS on ';' then on '=': values can hold neither.
const ARG_VALUE = /^[^;=\0\n\r]{0,1024}$/u;

/** Validates and copies an attachment; `netns` is required unless `netnsOptional` (DEL). */
export function validateAttachment(value: CniAttachment, netnsOptional: boolean): ValidAttachment {
  if (typeof value !== 'object' || value === null) throw new InvalidArgumentError('attachment', 'must be an object');
  const containerId = id(value.containerId, 'containerId');
  const ifName = interfaceName(value.ifName, 'ifName');
  let netns: string | undefined;
  if (value.netns !== undefined) netns = absolutePath(value.netns, 'netns');
  else if (!netnsOptional) throw new InvalidArgumentError('netns', 'is required: the path of the network namespace, e.g. /run/netns/NAME');

  if (value.args !== undefined && (typeof value.args !== 'object' || value.args === null)) {
    throw new InvalidArgumentError('args', 'must be an object or a list of [KEY, VALUE] pairs');
  }
  const pairs: (readonly [string, string])[] = Array.isArray(value.args)
    ? (value.args as readonly unknown[]).map((p, i) => {
        if (!Array.isArray(p) || p.length !== 2) throw new InvalidArgumentError(`args[${i}]`, 'must be a [KEY, VALUE] pair');
        return [p[0] as string, p[1] as string] as const;
      })
    : Object.entries((value.args ?? {}) as Record<string, string>);
  pairs.forEach(([k, v], i) => {
    if (typeof k !== 'string' || !ARG_KEY.test(k)) {
      throw new InvalidArgumentError(`args[${i}]`, `key ${JSON.stringify(k)} must be 1-64 characters of [A-Za-z0-9_]`);
    }
    if (typeof v !== 'string' || !ARG_VALUE.test(v)) {
      throw new InvalidArgumentError(`args.${k}`, `value ${JSON.stringify(v)} must be a string of at most 1024 characters without ";", "=", NUL or newlines`);
    }
  });

  let capabilityArgs: JsonObject = {};
  if (value.capabilityArgs !== undefined) {
    const caps = value.capabilityArgs;
    if (typeof caps !== 'object' || caps === null || Array.isArray(caps)) {
      throw new InvalidArgumentError('capabilityArgs', 'must be an object keyed by capability name');
    }
    try {
      capabilityArgs = JSON.parse(JSON.stringify(caps)) as JsonObject;
    } catch (cause) {
      throw new InvalidArgumentError('capabilityArgs', 'must be serializable as JSON', { cause });
    }
  }
  return { containerId, ifName, netns, args: pairs, capabilityArgs };
}

/** `CNI_ARGS` text: `K1=V1;K2=V2`. */
export function formatCniArgs(args: readonly (readonly [string, string])[]): string {
  return args.map(([k, v]) => `${k}=${v}`).join(';');
}

/**
 * Rejects a set of planned attachments of one container that would create two interfaces of
 * the same name (e.g. two networks both asking for `eth0`), before any plugin runs.
 *
 * @param planned - The networks to attach, each with the interface it would create.
 * @throws {@link InvalidArgumentError} naming both networks.
 */
export function assertUniqueInterfaceNames(planned: readonly { readonly network: string; readonly ifName: string }[]): void {
  const seen = new Map<string, string>();
  planned.forEach(({ network, ifName }, i) => {
    const name = interfaceName(ifName, `attachments[${i}].ifName`);
    const other = seen.get(name);
    if (other !== undefined) {
      throw new InvalidArgumentError(
        `attachments[${i}].ifName`,
        `interface name "${name}" is used by both network "${other}" and network "${network}": give each attachment its own ifName`,
      );
    }
    seen.set(name, network);
  });
}
