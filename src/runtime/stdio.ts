/**
 * The monitor's ends of a container's stdio: the fds its caller gave to `create` (or `exec`),
 * or the slave of a host terminal. Pipes and sockets are read and written without blocking
 * (net.Socket); a terminal through tty streams; anything else (a file, /dev/null) through fs
 * streams.
 *
 * @module
 */
import fs from 'node:fs';
import net from 'node:net';
import tty from 'node:tty';
import type { Readable, Writable } from 'node:stream';

function kind(fd: number): 'socket' | 'tty' | 'file' | 'none' {
  let stat: fs.Stats;
  try {
    stat = fs.fstatSync(fd);
  } catch {
    return 'none';
  }
  if (stat.isFIFO() || stat.isSocket()) return 'socket';
  if (tty.isatty(fd)) return 'tty';
  return 'file';
}

/** A Readable of `fd`, or undefined when the fd is not open. */
export function readableOf(fd: number): Readable | undefined {
  switch (kind(fd)) {
    case 'socket':
      return new net.Socket({ fd, readable: true, writable: false });
    case 'tty':
      return new tty.ReadStream(fd);
    case 'file':
      return fs.createReadStream('', { fd, autoClose: false });
    default:
      return undefined;
  }
}

/** A Writable of `fd`, or undefined when the fd is not open. */
export function writableOf(fd: number): Writable | undefined {
  switch (kind(fd)) {
    case 'socket':
      return new net.Socket({ fd, readable: false, writable: true });
    case 'tty':
      return new tty.WriteStream(fd);
    case 'file':
      return fs.createWriteStream('', { fd, autoClose: false });
    default:
      return undefined;
  }
}
