/**
 * Image references in the transport syntax of skopeo and podman (containers/image):
 *
 * - `oci:DIR[:REF]`: an OCI image layout directory, REF an `org.opencontainers.image.ref.name`;
 * - `oci-archive:FILE[:REF]`: a tar of such a layout (`podman save --format oci-archive`, `ctr export`);
 * - `docker-archive:FILE[:NAME:TAG | :@N]`: a `docker save` tar; NAME:TAG is one of its
 *   manifest.json RepoTags, `@N` its N-th image (from 0).
 *
 * The path ends at the first `:` after the transport, as containers/image (skopeo, podman)
 * splits it, so a path can hold no `:`: `oci:/a:b/c` is DIR `/a` with REF `b/c`, and
 * `oci:/a:b c` is refused for its REF (skopeo 1.9 answers the same to both). Everything after
 * the first `:` is the REF, never part of the path; a layout in a folder whose name holds a `:`
 * is reached through a symlink without one.
 *
 * @module
 */
import path from 'node:path';
import { InvalidArgumentError } from '../errors.js';

/** The transports vmpod reads images from. */
export type ImageTransport = 'oci' | 'oci-archive' | 'docker-archive';

/** A parsed image reference. */
export interface ImageReference {
  transport: ImageTransport;
  /** The layout directory or the archive file, absolute (resolved against the working directory). */
  path: string;
  /**
   * `oci`, `oci-archive`: the ref name asked for (an `org.opencontainers.image.ref.name`), or
   * undefined: the layout's only manifest. `docker-archive`: the repo:tag asked for, normalized
   * (`busybox` is `docker.io/library/busybox:latest`), or undefined.
   */
  ref?: string;
  /** `docker-archive` with `@N`: the index of the image in the archive's manifest.json. */
  index?: number;
  /** The reference as given (for messages). */
  text: string;
}

/** The ref.name grammar of the OCI image spec (annotations.md): components of alphanumerics and separators. */
const REF_NAME = /^[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*(?:\/[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*)*$/u;

/** Longest reference text accepted (a path and a name; PATH_MAX is 4096). */
const MAX_REFERENCE_LENGTH = 4096 + 256;

/** True when `name` is a valid `org.opencontainers.image.ref.name`. */
export function isRefName(name: string): boolean {
  return name.length > 0 && name.length <= 256 && REF_NAME.test(name);
}

/** Docker's name grammar (distribution/reference), enough to normalize `name[:tag]`. */
const DOCKER_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/u;
const DOCKER_TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/u;
const DOCKER_DOMAIN = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?))*(?::[0-9]+)?$/u;

/**
 * Normalizes a Docker `name[:tag]` as `docker` and skopeo do (`busybox` →
 * `docker.io/library/busybox:latest`, `me/app:1` → `docker.io/me/app:1`); undefined when it is
 * no valid name or carries a digest (a docker-archive reference may not).
 */
export function normalizeDockerName(text: string): string | undefined {
  if (text.length === 0 || text.length > 255 || text.includes('@')) return undefined;
  const slash = text.lastIndexOf('/');
  const colon = text.lastIndexOf(':');
  let name = text;
  let tag = 'latest';
  if (colon > slash) {
    name = text.slice(0, colon);
    tag = text.slice(colon + 1);
    if (!DOCKER_TAG.test(tag)) return undefined;
  }
  const parts = name.split('/');
  let domain = 'docker.io';
  const first = parts[0]!;
  if (parts.length > 1 && (first.includes('.') || first.includes(':') || first === 'localhost' || first !== first.toLowerCase())) {
    if (!DOCKER_DOMAIN.test(first)) return undefined;
    domain = first;
    parts.shift();
  }
  if (parts.length === 0 || !parts.every((p) => DOCKER_COMPONENT.test(p))) return undefined;
  if (domain === 'docker.io' && parts.length === 1) parts.unshift('library');
  return `${domain}/${parts.join('/')}:${tag}`;
}

/**
 * Parses `oci:DIR[:REF]`, `oci-archive:FILE[:REF]` or `docker-archive:FILE[:NAME:TAG|:@N]`.
 * Throws {@link InvalidArgumentError} naming the part that is wrong (`field`, default `image`:
 * `image.transport`, `image.path`, `image.ref`).
 */
export function parseImageReference(text: string, field = 'image'): ImageReference {
  if (typeof text !== 'string' || text.length === 0) throw new InvalidArgumentError(field, 'must be a non-empty string');
  if (text.length > MAX_REFERENCE_LENGTH) throw new InvalidArgumentError(field, `is longer than ${MAX_REFERENCE_LENGTH} characters`);
  if (text.includes('\0')) throw new InvalidArgumentError(field, 'contains a NUL character');
  const colon = text.indexOf(':');
  const transport = colon < 0 ? text : text.slice(0, colon);
  if (transport !== 'oci' && transport !== 'oci-archive' && transport !== 'docker-archive') {
    throw new InvalidArgumentError(`${field}.transport`, `${JSON.stringify(transport)} is not one of oci:, oci-archive:, docker-archive: (e.g. oci:/srv/images/app:1.0)`);
  }
  if (colon < 0) throw new InvalidArgumentError(`${field}.path`, `${transport}: needs a path (${transport}:PATH[:REF])`);
  const rest = text.slice(colon + 1);
  const sep = rest.indexOf(':');
  const file = sep < 0 ? rest : rest.slice(0, sep);
  const refText = sep < 0 ? undefined : rest.slice(sep + 1);
  if (file.length === 0) throw new InvalidArgumentError(`${field}.path`, `${transport}: needs a path (${transport}:PATH[:REF])`);
  const reference: ImageReference = { transport, path: path.resolve(file), text };
  if (refText === undefined || refText.length === 0) return reference;
  if (transport === 'docker-archive') {
    if (refText.startsWith('@')) {
      if (!/^@(?:0|[1-9][0-9]{0,5})$/u.test(refText)) throw new InvalidArgumentError(`${field}.ref`, `${JSON.stringify(refText)}: @N must be a whole number from 0`);
      reference.index = Number(refText.slice(1));
      return reference;
    }
    const normalized = normalizeDockerName(refText);
    if (normalized === undefined) throw new InvalidArgumentError(`${field}.ref`, `${JSON.stringify(refText)} is not a Docker NAME[:TAG] (digests are not allowed in a docker-archive reference)`);
    reference.ref = normalized;
    return reference;
  }
  if (!isRefName(refText)) {
    throw new InvalidArgumentError(`${field}.ref`, `${JSON.stringify(refText)} is not an OCI ref name (letters, digits, separators -._:@+; a path may hold no ':')`);
  }
  reference.ref = refText;
  return reference;
}

/** The reference written back in its transport syntax (path as resolved). */
export function formatImageReference(reference: Omit<ImageReference, 'text'>): string {
  const tail = reference.index !== undefined ? `:@${reference.index}` : reference.ref !== undefined ? `:${reference.ref}` : '';
  return `${reference.transport}:${reference.path}${tail}`;
}
