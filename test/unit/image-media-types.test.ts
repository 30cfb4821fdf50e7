import { describe, expect, it } from 'vitest';
import { layerCompression, mediaKind, sniffCompression } from '../../src/image/media-types.js';

describe('image media types', () => {
  it('knows the OCI and Docker index, manifest, config and layer types, and each layer\'s compression', () => {
    expect(mediaKind('application/vnd.oci.image.index.v1+json')).toBe('index');
    expect(mediaKind('application/vnd.docker.distribution.manifest.list.v2+json')).toBe('index');
    expect(mediaKind('application/vnd.oci.image.manifest.v1+json')).toBe('manifest');
    expect(mediaKind('application/vnd.docker.distribution.manifest.v2+json')).toBe('manifest');
    expect(mediaKind('application/vnd.oci.image.config.v1+json')).toBe('config');
    expect(mediaKind('application/vnd.docker.container.image.v1+json')).toBe('config');
    const layers: [string, string][] = [
      ['application/vnd.oci.image.layer.v1.tar', 'none'],
      ['application/vnd.oci.image.layer.v1.tar+gzip', 'gzip'],
      ['application/vnd.oci.image.layer.v1.tar+zstd', 'zstd'],
      ['application/vnd.oci.image.layer.nondistributable.v1.tar', 'none'],
      ['application/vnd.oci.image.layer.nondistributable.v1.tar+gzip', 'gzip'],
      ['application/vnd.oci.image.layer.nondistributable.v1.tar+zstd', 'zstd'],
      ['application/vnd.docker.image.rootfs.diff.tar.gzip', 'gzip'],
      ['application/vnd.docker.image.rootfs.foreign.diff.tar.gzip', 'gzip'],
    ];
    for (const [type, compression] of layers) {
      expect(mediaKind(type)).toBe('layer');
      expect(layerCompression(type)).toBe(compression);
    }
    for (const unknown of ['application/vnd.docker.distribution.manifest.v1+json', 'application/vnd.oci.image.layer.v1.tar+lz4', 'application/octet-stream', '']) {
      expect(mediaKind(unknown)).toBeUndefined();
      expect(layerCompression(unknown)).toBeUndefined();
    }
  });

  it('tells a blob\'s compression by its first bytes', () => {
    expect(sniffCompression(Uint8Array.from([0x1f, 0x8b, 8, 0]))).toBe('gzip');
    expect(sniffCompression(Uint8Array.from([0x28, 0xb5, 0x2f, 0xfd]))).toBe('zstd');
    expect(sniffCompression(Uint8Array.from([0x28, 0xb5, 0x2f]))).toBe('none');
    expect(sniffCompression(Buffer.from('ustar'))).toBe('none');
    expect(sniffCompression(new Uint8Array(0))).toBe('none');
  });
});
