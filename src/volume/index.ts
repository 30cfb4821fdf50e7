/**
 * Volumes of sandboxes and containers: host directories, block devices and images, tmpfs and
 * guest hugepages.
 *
 * @module
 */
export { Volume } from './volume.js';
export {
  checkVolumeSpec,
  type BlockVolume,
  type ContainerVolume,
  type DirectoryVolume,
  type HugepagesVolume,
  type TmpfsVolume,
  type VolumeSpec,
} from './spec.js';
export { VolumeReadOnlyError } from './errors.js';
