/**
 * Reading files of an unpacked image's root filesystem from the host, safely: the path is resolved
 * with `openat2(2)` and `RESOLVE_IN_ROOT`, so `..` and symlinks (absolute ones too) met on the way
 * resolve as if the root were `/` — an image's `/etc/passwd -> /host/etc/passwd` reads the image's
 * own file, never the host's — and magic links (`/proc/self/...`) are refused.
 *
 * @module
 */
import fsSync from 'node:fs';
import { promisify } from 'node:util';
import { InvalidArgumentError } from '../errors.js';
import { native } from '../native.js';
import { callNative, systemError } from '../native-call.js';
import { InvalidImageError } from './errors.js';

const read = promisify(fsSync.read);
const fstat = promisify(fsSync.fstat);

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;

/**
 * Opens `rootDir` itself as a directory fd (`O_PATH`, following symlinks on the host side: the
 * caller names the root). The caller closes it with `native().closeFd`.
 */
export async function openRoot(rootDir: string): Promise<number> {
  const c = native().pathConstants;
  return callNative((n) => n.openAt(c.AT_FDCWD, rootDir, c.O_PATH | c.O_DIRECTORY, 0));
}

/**
 * Reads the regular file at `path` (absolute or relative: both are taken from the root) inside
 * the tree at `rootDir`, resolving every component inside that tree.
 *
 * Resolves with the file's bytes, or with `null` when there is no such file (a missing component,
 * or a dangling symlink). Rejects with {@link InvalidImageError} when the file is not a regular
 * file (a fifo, a device, a directory: never opened for reading, so never blocks) or is larger
 * than `maxBytes`, and with a SystemError for other failures (ELOOP for a magic link, ...).
 */
export async function readFileInRoot(rootDir: string, path: string, maxBytes: number): Promise<Buffer | null> {
  if (typeof path !== 'string' || path === '' || path.includes('\0')) throw new InvalidArgumentError('path', `${JSON.stringify(path)} is not a path`);
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) throw new InvalidArgumentError('maxBytes', 'must be a whole number of bytes');
  const n = native();
  const c = n.pathConstants;
  const rootFd = await openRoot(rootDir);
  let fd: number;
  try {
    // O_NONBLOCK: opening a fifo for reading must not wait for a writer (it is refused just below).
    fd = await n.openAt(rootFd, path.replace(/^\/+/u, '') || '.', c.O_RDONLY | c.O_NONBLOCK, c.RESOLVE_IN_ROOT | c.RESOLVE_NO_MAGICLINKS);
  } catch (e) {
    const code = (e as { code?: unknown }).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw systemError(e);
  } finally {
    n.closeFd(rootFd);
  }
  try {
    const st = await fstat(fd);
    if ((st.mode & S_IFMT) !== S_IFREG) throw new InvalidImageError(rootDir, `${path} is not a regular file`);
    if (st.size > maxBytes) throw new InvalidImageError(rootDir, `${path} is larger than ${maxBytes} bytes (${st.size})`);
    // One byte more than allowed is asked for: a file that grew since the fstat is caught too.
    const buffer = Buffer.alloc(maxBytes + 1);
    let length = 0;
    for (;;) {
      const { bytesRead } = await read(fd, buffer, length, buffer.length - length, null);
      if (bytesRead === 0) break;
      length += bytesRead;
      if (length > maxBytes) throw new InvalidImageError(rootDir, `${path} is larger than ${maxBytes} bytes`);
    }
    return buffer.subarray(0, length);
  } finally {
    n.closeFd(fd);
  }
}
