/**
 * `vmpod/network`: host networking and CNI. Network namespaces, links, addresses, routes, tc,
 * tap and macvtap fds, endpoints and inter-network models, the scan of a namespace (each call
 * equals an `ip`/`tc` command and is made over rtnetlink by the native addon), and CNI: network
 * configurations ({@link CniConfig}), plugin chains ({@link CniRuntime}) and their typed results.
 * See docs/networking.md, docs/sandbox-networking.md and docs/cni.md.
 *
 * Besides their own errors, its calls throw vmpod's generic ones: {@link InvalidArgumentError},
 * {@link NotFoundError} and {@link AlreadyExistsError}, exported here too. {@link Network} and the
 * network part of a sandbox's config are in `vmpod` as well.
 *
 * @module vmpod/network
 */
export * from '../network/index.js';
export * from '../network/cni/index.js';
export { AlreadyExistsError, InvalidArgumentError, NotFoundError } from '../errors.js';
