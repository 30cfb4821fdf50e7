/**
 * `vmpod/image`: OCI images below the {@link Image} class: references (`oci:`, `oci-archive:`,
 * `docker-archive:`), image sources that verify every blob while they stream, the image config
 * to runtime spec conversion, applying a layer's tar inside a root, and the image store's
 * records. `Image` itself and the image errors come from `vmpod`. See docs/images.md.
 *
 * @module vmpod/image
 */
export * from '../image/index.js';
