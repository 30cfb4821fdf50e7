import { describe, expect, it } from 'vitest';
import { formatImages, isImageReference, progressLine } from '../../src/cli/commands/image.js';
import type { ImageRecord } from '../../src/image/store.js';

const digest = (c: string): string => `sha256:${c.repeat(64)}`;

describe('vmpod image (CLI)', () => {
  it('tells image references from bundle and rootfs paths', () => {
    expect(isImageReference('oci:/srv/layout:1.0')).toBe(true);
    expect(isImageReference('oci-archive:/srv/app.tar')).toBe(true);
    expect(isImageReference('docker-archive:/srv/app.tar:app:1')).toBe(true);
    expect(isImageReference('/srv/bundles/web')).toBe(false);
    expect(isImageReference('./oci:dir')).toBe(false);
    expect(isImageReference('docker://debian')).toBe(false);
  });

  it('prints one progress line per layer event', () => {
    const base = { layer: 2, layers: 3, diffId: digest('a'), blobSize: 10 };
    expect(progressLine('oci:/l:t', { ...base, bytes: 3 << 20, phase: 'unpacking' })).toBe('image oci:/l:t: layer 2/3 aaaaaaaaaaaa unpacking 3.0 MiB');
    expect(progressLine('oci:/l:t', { ...base, bytes: 5 << 20, phase: 'done' })).toBe('image oci:/l:t: layer 2/3 aaaaaaaaaaaa unpacked (5.0 MiB)');
    expect(progressLine('oci:/l:t', { ...base, bytes: 0, phase: 'cached' })).toBe('image oci:/l:t: layer 2/3 aaaaaaaaaaaa in the store');
  });

  it('lists images in a table, one line each, made printable', () => {
    const record: ImageRecord = {
      id: digest('b'),
      configDigest: digest('c'),
      config: {},
      diffIds: [digest('d'), digest('e')],
      chainId: digest('f'),
      platform: 'linux/amd64',
      references: ['oci:/srv/x:1', 'oci:/srv/evil\n:2'],
      layerSizes: [1 << 20, 1 << 20],
      createdAt: '2026-12-08T00:00:00.000Z',
      lastUsed: '2026-12-08T01:02:03.000Z',
    };
    const lines = formatImages([record]).split('\n');
    expect(lines[0]).toMatch(/^ID +REFERENCES +LAYERS +SIZE +PLATFORM +LAST USED$/u);
    expect(lines[1]).toContain('bbbbbbbbbbbb');
    expect(lines[1]).toContain('2.0 MiB');
    expect(lines[1]).toContain('2026-12-08 01:02:03');
    expect(lines).toHaveLength(3); // the newline in a reference did not make a line of its own
  });
});
