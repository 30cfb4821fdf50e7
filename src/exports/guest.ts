/**
 * `vmpod/guest`: the guest assets a sandbox boots (kernel, initramfs with busybox, modules, the
 * agent and the builtin rootfs): how they are built, found and checked. A sandbox builds them on
 * first use; `vmpod guest build` and {@link buildGuestAssets} build them ahead. See
 * docs/guest-assets.md.
 *
 * @module vmpod/guest
 */
export * from '../guest/index.js';
