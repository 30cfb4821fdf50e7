/**
 * Errors of the NFV sandbox resources. Each names what is wrong and the fix. All extend
 * {@link VmpodError}.
 *
 * @module
 */
import { VmpodError, type VmpodErrorOptions } from '../errors.js';

/** The vhost-user backend's socket is missing, or is not a socket (client mode). */
export class VhostUserSocketError extends VmpodError {
  constructor(
    /** The socket path. */
    readonly socket: string,
    /** Why it cannot be used. */
    readonly reason: 'missing' | 'not-a-socket' | 'in-use',
    options: VmpodErrorOptions = {},
  ) {
    const why =
      reason === 'missing'
        ? 'does not exist: start the vhost-user backend (testpmd, OVS-DPDK, VPP) first, or use mode "server"'
        : reason === 'not-a-socket'
          ? 'is not a unix socket'
          : 'already exists: another VM or backend listens there';
    super('ERR_VMPOD_VHOST_USER_SOCKET', `vhost-user socket ${socket} ${why}`, options);
  }
}
