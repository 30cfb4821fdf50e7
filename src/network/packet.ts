/**
 * Raw Ethernet frames on a link: an AF_PACKET socket, to inject or observe traffic on a data path
 * (for example to check that frames cross a tc redirect). There is no `ip` equivalent; `tcpdump
 * -i DEV` reads the same way.
 *
 * @module
 */
import * as validate from '../validate.js';
import * as check from './check.js';
import { linkErrors } from './link.js';
import { nsArg, type NetnsOption } from './netns.js';
import { callNative } from '../native-call.js';

export interface PacketSocketOptions extends NetnsOption {
  /** Receive only frames arriving on the link, not those it sends (PACKET_IGNORE_OUTGOING). */
  ignoreOutgoing?: boolean;
  /** O_NONBLOCK: reads fail with EAGAIN when no frame is queued. */
  nonBlocking?: boolean;
}

/**
 * Opens an AF_PACKET raw socket bound to `dev` for every protocol. `fs.readSync(fd, buf)` returns
 * one whole frame (from the destination MAC on), `fs.writeSync(fd, frame)` sends one. The fd is
 * O_CLOEXEC and the caller's to close.
 *
 * @throws {@link NotFoundError} when there is no such link.
 */
export async function openPacketSocket(dev: string, options?: PacketSocketOptions): Promise<number> {
  const name = validate.interfaceName(dev, 'dev');
  const o = check.options(options, 'options');
  const ignoreOutgoing = check.boolean(o.ignoreOutgoing ?? false, 'ignoreOutgoing');
  const nonBlocking = check.boolean(o.nonBlocking ?? false, 'nonBlocking');
  const ns = nsArg(o.netns);
  return callNative((n) => n.packetOpen(ns, name, { ignoreOutgoing, nonBlocking }), linkErrors(name));
}
