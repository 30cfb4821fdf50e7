/**
 * Which VM a container runs in, from its spec. By default each container gets a VM of its own
 * (the sandbox is named after the container). A container joins the VM of a named sandbox when
 * its annotations name one:
 *
 * - `io.vmpod.sandbox`: NAME (vmpod's own; the first container that names a sandbox boots it);
 * - containerd's CRI plugin: `io.kubernetes.cri.container-type` = `sandbox` | `container` and
 *   `io.kubernetes.cri.sandbox-id`;
 * - CRI-O: `io.kubernetes.cri-o.ContainerType` and `io.kubernetes.cri-o.SandboxID`.
 *
 * The VM's size comes from `io.vmpod.sandbox.cpus` and `io.vmpod.sandbox.memory-mib` (of the
 * container that boots it), and its network from the spec's network namespace (a path: its
 * interfaces become the VM's NICs; none: the VM has no NIC, as with `--network none`).
 *
 * @module
 */
import { createHash } from 'node:crypto';
import { RuntimeError } from './log.js';

/** vmpod's annotation naming the sandbox (VM) a container runs in. */
export const SANDBOX_ANNOTATION = 'io.vmpod.sandbox';
/** vCPUs of a VM the container boots (default 1). */
export const CPUS_ANNOTATION = 'io.vmpod.sandbox.cpus';
/** Guest RAM in MiB of a VM the container boots (default 256). */
export const MEMORY_ANNOTATION = 'io.vmpod.sandbox.memory-mib';

const CRI_TYPE = 'io.kubernetes.cri.container-type';
const CRI_SANDBOX = 'io.kubernetes.cri.sandbox-id';
const CRIO_TYPE = 'io.kubernetes.cri-o.ContainerType';
const CRIO_SANDBOX = 'io.kubernetes.cri-o.SandboxID';

const LIBRARY_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/u;

/** The sandbox name a container's annotations give it (its own id when none). */
export function sandboxName(containerId: string, annotations: Record<string, string>): string {
  const own = annotations[SANDBOX_ANNOTATION];
  if (own !== undefined) {
    if (own === '') throw new RuntimeError(`annotation ${SANDBOX_ANNOTATION} is empty`);
    return own;
  }
  for (const [typeKey, sandboxKey] of [[CRI_TYPE, CRI_SANDBOX], [CRIO_TYPE, CRIO_SANDBOX]] as const) {
    const type = annotations[typeKey];
    if (type === undefined) continue;
    const sandbox = annotations[sandboxKey];
    if (type === 'sandbox') return sandbox !== undefined && sandbox !== '' ? sandbox : containerId;
    if (type === 'container') {
      if (sandbox === undefined || sandbox === '') throw new RuntimeError(`annotation ${typeKey} is "container" but ${sandboxKey} is missing`);
      return sandbox;
    }
  }
  return containerId;
}

/**
 * Which part of a pod a container is, from the CRI annotations (containerd's, else CRI-O's):
 * `sandbox` (the pod's infrastructure container), `container` (an app container joining it), or
 * undefined when neither names a type (a container run outside CRI).
 */
export function criContainerRole(annotations: Record<string, string>): 'sandbox' | 'container' | undefined {
  for (const key of [CRI_TYPE, CRIO_TYPE]) {
    const type = annotations[key];
    if (type === 'sandbox' || type === 'container') return type;
  }
  return undefined;
}

/** The vmpod sandbox id of a sandbox name: the name itself when vmpod takes it, else a digest of it. */
export function librarySandboxId(name: string): string {
  if (LIBRARY_ID.test(name) && !name.includes('..')) return name;
  return `s-${createHash('sha256').update(name).digest('hex').slice(0, 32)}`;
}

/** The spec's network namespace path (`linux.namespaces[type=network].path`), if it has one. */
export function networkNamespace(spec: { linux?: { namespaces?: { type: string; path?: string }[] } }): string | undefined {
  const ns = spec.linux?.namespaces?.find((n) => n.type === 'network');
  return ns?.path !== undefined && ns.path !== '' ? ns.path : undefined;
}

/** The VM size the annotations ask for. */
export function vmSize(annotations: Record<string, string>): { cpus?: number; memoryMiB?: number } {
  const size: { cpus?: number; memoryMiB?: number } = {};
  const number = (key: string): number | undefined => {
    const text = annotations[key];
    if (text === undefined) return undefined;
    if (!/^[1-9][0-9]{0,6}$/u.test(text)) throw new RuntimeError(`annotation ${key}: "${text}" is not a positive integer`);
    return Number(text);
  };
  const cpus = number(CPUS_ANNOTATION);
  const memoryMiB = number(MEMORY_ANNOTATION);
  if (cpus !== undefined) size.cpus = cpus;
  if (memoryMiB !== undefined) size.memoryMiB = memoryMiB;
  return size;
}
