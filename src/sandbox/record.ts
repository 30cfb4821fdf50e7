/**
 * The persisted record of a sandbox (`state.json`): its checked config, its state, and every
 * host resource it holds, each written down BEFORE the resource is made, so that `delete` (or
 * a cleanup pass after a crash) always knows what to release.
 *
 * @internal
 * @module
 */
import type { VmHandle } from '../hypervisor/hypervisor.js';
import { CorruptStateError } from '../state/store.js';
import type { ResolvedSandboxConfig } from './config.js';
import type { SandboxState } from './state-machine.js';

/** Format of state.json written by this version. */
export const RECORD_FORMAT = 1;

/** The persisted state of one sandbox. */
export interface SandboxRecord {
  format: typeof RECORD_FORMAT;
  id: string;
  state: SandboxState;
  /** ISO dates. */
  createdAt: string;
  updatedAt: string;
  /** Why the VM last stopped, once it has. */
  stopReason?: { reason: 'requested' | 'unexpected' | 'guest'; detail: string };
  config: ResolvedSandboxConfig;
  /** The guest assets the VM booted. */
  guest?: { kernel: string; initramfs: string; id?: string; kernelRelease?: string };
  /** The running VM (absent when none runs). */
  vm?: VmHandle;
  /** Persisted state of each resource (see resource.ts), by kind. */
  resources: Record<string, unknown>;
  /** Host mount points made for containers (rootfs, bind sources), in creation order; released in reverse. */
  mounts: string[];
  /** Containers using each shared rootfs bind (a mount point of `mounts`), by mount point. */
  rootfsUsers?: Record<string, string[]>;
}

const STATES = new Set(['created', 'running', 'paused', 'stopped', 'deleted']);

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Checks a parsed state.json (our own file, but it may be truncated or from another version). */
export function checkRecord(value: unknown, file: string): SandboxRecord {
  const bad = (what: string): never => {
    throw new CorruptStateError(file, what);
  };
  if (!isObject(value)) return bad('not an object');
  if (value['format'] !== RECORD_FORMAT) bad(`format ${String(value['format'])} is not ${RECORD_FORMAT}: written by another vmpod version`);
  if (typeof value['id'] !== 'string') bad('id is missing');
  if (typeof value['state'] !== 'string' || !STATES.has(value['state'])) bad('state is invalid');
  if (!isObject(value['config']) || value['config']['id'] !== value['id']) bad('config is missing or names another sandbox');
  if (!Array.isArray(value['mounts']) || value['mounts'].some((m) => typeof m !== 'string' || !m.startsWith('/'))) bad('mounts is invalid');
  const users = value['rootfsUsers'];
  if (users !== undefined && (!isObject(users) || Object.values(users).some((u) => !Array.isArray(u) || u.some((id) => typeof id !== 'string')))) {
    bad('rootfsUsers is invalid');
  }
  const vm = value['vm'];
  if (vm !== undefined && (!isObject(vm) || typeof vm['pid'] !== 'number' || !Array.isArray(vm['controlSockets']))) bad('vm is invalid');
  if (!isObject(value['resources'])) bad('resources is invalid');
  return value as unknown as SandboxRecord;
}
