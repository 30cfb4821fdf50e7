/**
 * The shim's protobuf messages, loaded once from the .proto files next to this module (our own
 * text of containerd 1.6's definitions: same packages, names and field numbers), and the
 * conversions every part of the shim uses:
 *
 * - {@link decodeMessage}/{@link encodeMessage}: bytes ↔ the plain objects of `task-api.ts`
 *   (camelCase, every field present, longs as numbers, `Date` for a Timestamp, `{ typeUrl, value }`
 *   for an Any);
 * - {@link encodeAny}/{@link decodeAny}: a message ↔ a `google.protobuf.Any`. A protobuf type's URL
 *   is its bare full name (`containerd.events.TaskExit`, `io.containerd.cgroups.v2.Metrics`), as
 *   containerd's typeurl registry names them; a `types.containerd.io/...` URL (the runtime-spec
 *   types containerd sends, e.g. `types.containerd.io/opencontainers/runtime-spec/1/Process`) holds JSON.
 *
 * @module
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import { InvalidArgumentError } from '../../errors.js';
import type { AnyMessage } from './task-api.js';

/** The .proto files of the shim, in this directory (src/shim/proto, or dist/shim/proto once built). */
export const PROTO_FILES = [
  'google.proto',
  'google-rpc.proto',
  'ttrpc.proto',
  'types.proto',
  'task-types.proto',
  'shim.proto',
  'events.proto',
  'events-service.proto',
  'cgroups.proto',
] as const;

/** The prefix of the JSON-encoded types containerd puts in an Any. */
export const JSON_TYPE_PREFIX = 'types.containerd.io/';

let loaded: protobuf.Root | undefined;

/** The root with every shim message, loaded on first use. */
export function protoRoot(): protobuf.Root {
  if (loaded !== undefined) return loaded;
  const dir = path.dirname(fileURLToPath(import.meta.url));
  const root = new protobuf.Root();
  root.loadSync(PROTO_FILES.map((f) => path.join(dir, f)), { keepCase: false });
  root.resolveAll();
  loaded = root;
  return root;
}

const typeCache = new Map<string, protobuf.Type>();

/** A message type by full name (`containerd.task.v2.CreateTaskRequest`); throws when unknown. */
export function messageType(fullName: string): protobuf.Type {
  let type = typeCache.get(fullName);
  if (type === undefined) {
    type = protoRoot().lookupType(fullName);
    typeCache.set(fullName, type);
  }
  return type;
}

/** Whether `fullName` is a message type of ours. */
export function hasMessageType(fullName: string): boolean {
  try {
    messageType(fullName);
    return true;
  } catch {
    return false;
  }
}

const TIMESTAMP = '.google.protobuf.Timestamp';
const ANY = '.google.protobuf.Any';

/** Decoded Timestamp → Date (a zero Timestamp stays the epoch, as Go's does). */
function toDate(ts: { seconds?: number; nanos?: number }): Date {
  return new Date((ts.seconds ?? 0) * 1000 + Math.floor((ts.nanos ?? 0) / 1e6));
}

function fromDate(date: Date): { seconds: number; nanos: number } {
  const ms = date.getTime();
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: (ms - seconds * 1000) * 1e6 };
}

// Walks a decoded object and replaces its Timestamps with Dates (nested messages, lists, maps).
function afterDecode(type: protobuf.Type, object: Record<string, unknown>): Record<string, unknown> {
  for (const field of type.fieldsArray) {
    const sub = field.resolvedType;
    const value = object[field.name];
    if (value === null || value === undefined) continue;
    if (field.type === 'bytes') {
      const buf = (v: unknown): Buffer => (Buffer.isBuffer(v) ? v : Buffer.from((v as Uint8Array).buffer, (v as Uint8Array).byteOffset, (v as Uint8Array).byteLength));
      object[field.name] = field.repeated ? (value as unknown[]).map(buf) : buf(value);
      continue;
    }
    if (!(sub instanceof protobuf.Type)) continue;
    const one = (v: unknown): unknown => {
      if (v === null || v === undefined) return v;
      if (sub.fullName === TIMESTAMP) return toDate(v as { seconds?: number; nanos?: number });
      if (sub.fullName === ANY) return { typeUrl: (v as AnyMessage).typeUrl, value: Buffer.from((v as AnyMessage).value) };
      return afterDecode(sub, v as Record<string, unknown>);
    };
    if (field.repeated) object[field.name] = (value as unknown[]).map(one);
    else if (field.map) {
      const map = value as Record<string, unknown>;
      for (const key of Object.keys(map)) map[key] = one(map[key]);
    } else object[field.name] = one(value);
  }
  return object;
}

// The reverse: a copy with Dates as Timestamps; null/undefined fields left out.
function beforeEncode(type: protobuf.Type, object: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const field of type.fieldsArray) {
    const value = object[field.name];
    if (value === null || value === undefined) continue;
    const sub = field.resolvedType;
    if (!(sub instanceof protobuf.Type)) {
      out[field.name] = value;
      continue;
    }
    const one = (v: unknown): unknown => {
      if (sub.fullName === TIMESTAMP) return v instanceof Date ? fromDate(v) : v;
      if (sub.fullName === ANY) return v;
      return beforeEncode(sub, v as Record<string, unknown>);
    };
    if (field.repeated) out[field.name] = (value as unknown[]).map(one);
    else if (field.map) {
      const map: Record<string, unknown> = {};
      for (const [key, v] of Object.entries(value as Record<string, unknown>)) map[key] = one(v);
      out[field.name] = map;
    } else out[field.name] = one(value);
  }
  return out;
}

/**
 * Bytes → the plain object of `typeName` (every field present). A payload that is not a valid
 * encoding throws InvalidArgumentError (field `payload`).
 */
export function decodeMessage<T = Record<string, unknown>>(typeName: string, bytes: Uint8Array): T {
  const type = messageType(typeName);
  let message: protobuf.Message;
  try {
    // A plain Uint8Array view, not a Buffer: protobufjs's Buffer reader clamps a truncated string
    // to the bytes there are instead of refusing it; its generic reader checks every length.
    message = type.decode(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  } catch (error) {
    throw new InvalidArgumentError('payload', `not a valid ${typeName}: ${(error as Error).message}`, { cause: error });
  }
  const object = type.toObject(message, { longs: Number, enums: Number, bytes: Buffer, defaults: true, arrays: true, objects: true }) as Record<string, unknown>;
  return afterDecode(type, object) as T;
}

/** The plain object (Dates for Timestamps, `{ typeUrl, value }` for Anys) → bytes. */
export function encodeMessage(typeName: string, object: object): Buffer {
  const type = messageType(typeName);
  const message = type.fromObject(beforeEncode(type, object as Record<string, unknown>));
  return Buffer.from(type.encode(message).finish());
}

/**
 * A message (a protobuf type of ours by full name, or a `types.containerd.io/...` JSON type) as a
 * `google.protobuf.Any` with the URL containerd expects.
 */
export function encodeAny(typeName: string, object: object): AnyMessage {
  if (typeName.startsWith(JSON_TYPE_PREFIX)) return { typeUrl: typeName, value: Buffer.from(JSON.stringify(object)) };
  return { typeUrl: typeName, value: encodeMessage(typeName, object) };
}

/**
 * An Any's message: JSON for a `types.containerd.io/...` URL, else the protobuf type named by the
 * URL's last path part (so `types.googleapis.com/x.Y` and bare `x.Y` both work). An unknown type
 * or an invalid value throws InvalidArgumentError.
 */
export function decodeAny<T = Record<string, unknown>>(any: AnyMessage): T {
  if (any.typeUrl.startsWith(JSON_TYPE_PREFIX)) {
    try {
      return JSON.parse(Buffer.from(any.value).toString('utf8')) as T;
    } catch (error) {
      throw new InvalidArgumentError('any.value', `${any.typeUrl}: not valid JSON: ${(error as Error).message}`, { cause: error });
    }
  }
  const name = any.typeUrl.slice(any.typeUrl.lastIndexOf('/') + 1);
  if (!hasMessageType(name)) throw new InvalidArgumentError('any.typeUrl', `unknown type ${JSON.stringify(any.typeUrl)}`);
  return decodeMessage<T>(name, any.value);
}

export type * from './task-api.js';
export { TASK_METHODS, TASK_SERVICE, TaskStatus } from './task-api.js';
