import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { formatImageReference, isRefName, normalizeDockerName, parseImageReference } from '../../src/image/reference.js';

function fieldOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(InvalidArgumentError);
    return (error as InvalidArgumentError).field;
  }
  return undefined;
}

describe('image references (skopeo transport syntax)', () => {
  it('oci:DIR[:REF] and oci-archive:FILE[:REF]: the path ends at the first ":", the rest is the ref name', () => {
    expect(parseImageReference('oci:/srv/images/app')).toEqual({ transport: 'oci', path: '/srv/images/app', text: 'oci:/srv/images/app' });
    expect(parseImageReference('oci:/srv/images/app:1.0')).toMatchObject({ path: '/srv/images/app', ref: '1.0' });
    expect(parseImageReference('oci:/a:b')).toMatchObject({ path: '/a', ref: 'b' });
    expect(parseImageReference('oci:/a:example.com/app:v1@x')).toMatchObject({ path: '/a', ref: 'example.com/app:v1@x' });
    expect(parseImageReference('oci-archive:/tmp/x.tar:latest')).toMatchObject({ transport: 'oci-archive', path: '/tmp/x.tar', ref: 'latest' });
    expect(parseImageReference('oci:/srv/app:')).toMatchObject({ path: '/srv/app' });
    expect(parseImageReference('oci:relative/dir').path).toBe(`${process.cwd()}/relative/dir`);
  });

  it('ref names follow the image spec grammar (components of alphanumerics joined by -._:@+ or --, with /)', () => {
    for (const good of ['v1', '1.0', 'a--b', 'a/b/c', 'registry:5000/app:tag', 'x+y@z']) expect(isRefName(good)).toBe(true);
    for (const bad of ['', '-a', 'a-', 'a//b', 'a b', 'a/', '.a', 'a..b', 'ä', 'x'.repeat(257)]) expect(isRefName(bad)).toBe(false);
    expect(fieldOf(() => parseImageReference('oci:/srv/app:bad ref'))).toBe('image.ref');
    expect(fieldOf(() => parseImageReference('oci:/srv/app:a:/b'))).toBe('image.ref');
  });

  it('docker-archive:FILE[:NAME:TAG | :@N]: names normalized as docker does, digests refused', () => {
    expect(parseImageReference('docker-archive:/tmp/d.tar')).toMatchObject({ transport: 'docker-archive', path: '/tmp/d.tar' });
    expect(parseImageReference('docker-archive:/tmp/d.tar:busybox').ref).toBe('docker.io/library/busybox:latest');
    expect(parseImageReference('docker-archive:/tmp/d.tar:me/app:1.2').ref).toBe('docker.io/me/app:1.2');
    expect(parseImageReference('docker-archive:/tmp/d.tar:localhost:5000/app').ref).toBe('localhost:5000/app:latest');
    expect(parseImageReference('docker-archive:/tmp/d.tar:quay.io/org/app:v2').ref).toBe('quay.io/org/app:v2');
    expect(parseImageReference('docker-archive:/tmp/d.tar:@3')).toMatchObject({ index: 3 });
    expect(normalizeDockerName('Busybox')).toBeUndefined();
    expect(normalizeDockerName('app@sha256:abcd')).toBeUndefined();
    expect(fieldOf(() => parseImageReference('docker-archive:/tmp/d.tar:app@sha256:0000'))).toBe('image.ref');
    expect(fieldOf(() => parseImageReference('docker-archive:/tmp/d.tar:@-1'))).toBe('image.ref');
    expect(fieldOf(() => parseImageReference('docker-archive:/tmp/d.tar:@01'))).toBe('image.ref');
  });

  it('refuses an unknown or missing transport, an empty path, NUL, an over-long text; the field is named', () => {
    expect(fieldOf(() => parseImageReference('docker://busybox'))).toBe('image.transport');
    expect(fieldOf(() => parseImageReference('/srv/images/app'))).toBe('image.transport');
    expect(fieldOf(() => parseImageReference('oci'))).toBe('image.path');
    expect(fieldOf(() => parseImageReference('oci::ref'))).toBe('image.path');
    expect(fieldOf(() => parseImageReference('oci:/a\0b'))).toBe('image');
    expect(fieldOf(() => parseImageReference(''))).toBe('image');
    expect(fieldOf(() => parseImageReference(`oci:/${'a'.repeat(5000)}`))).toBe('image');
    expect(fieldOf(() => parseImageReference('docker:x', 'run.image'))).toBe('run.image.transport');
  });

  it('formats back in the same syntax', () => {
    for (const text of ['oci:/srv/app:1.0', 'oci-archive:/x.tar', 'docker-archive:/d.tar:@2', 'docker-archive:/d.tar:docker.io/library/busybox:latest']) {
      expect(formatImageReference(parseImageReference(text))).toBe(text);
    }
  });
});
