// An in-memory connected pair of duplex streams (like a socketpair), for ttRPC tests without sockets.
import { Duplex } from 'node:stream';

export function duplexPair(): [Duplex, Duplex] {
  let a!: Duplex;
  let b!: Duplex;
  const make = (peer: () => Duplex): Duplex =>
    new Duplex({
      read() {},
      write(chunk: Buffer, _enc, cb) {
        const other = peer();
        if (!other.destroyed) other.push(Buffer.from(chunk));
        cb();
      },
      final(cb) {
        const other = peer();
        if (!other.destroyed) other.push(null);
        cb();
      },
      destroy(error, cb) {
        const other = peer();
        if (!other.destroyed) other.destroy();
        cb(error);
      },
      allowHalfOpen: true,
    });
  a = make(() => b);
  b = make(() => a);
  return [a, b];
}
