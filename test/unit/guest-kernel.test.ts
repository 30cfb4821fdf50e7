import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { checkGuestExecutable } from '../../src/guest/build.js';
import { GuestBuildError } from '../../src/guest/errors.js';
import { GUEST_AGENT_PATH, INIT_MARKER, renderInit } from '../../src/guest/init.js';
import { locateBzImagePayload, parseKernelConfig } from '../../src/guest/kernel.js';

/** A bzImage-shaped buffer: boot header, setup sectors, then the payload and its size trailer. */
function fakeBzImage(payload: Buffer, decompressedSize: number, setupSects = 3, version = 0x20f): Buffer {
  const image = Buffer.alloc((setupSects + 1) * 512 + 100 + payload.length + 4);
  image[0x1f1] = setupSects;
  image.write('HdrS', 0x202, 'latin1');
  image.writeUInt16LE(version, 0x206);
  image.writeUInt32LE(100, 0x248); // payload_offset, after the protected-mode start
  image.writeUInt32LE(payload.length + 4, 0x24c); // payload_length, with the size trailer
  const start = (setupSects + 1) * 512 + 100;
  payload.copy(image, start);
  image.writeUInt32LE(decompressedSize, start + payload.length);
  return image;
}

describe('bzImage payload', () => {
  it('finds an LZ4 payload from the boot header, without the size trailer', () => {
    const payload = Buffer.concat([Buffer.from([0x02, 0x21, 0x4c, 0x18]), Buffer.alloc(60, 1)]);
    const found = locateBzImagePayload(fakeBzImage(payload, 123456));
    expect(found).toEqual({ offset: 4 * 512 + 100, length: 64, decompressedSize: 123456, compression: 'lz4' });
  });
  it('recognises other compressions so the caller can fall back to the bzImage', () => {
    expect(locateBzImagePayload(fakeBzImage(Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0]), 1)).compression).toBe('gzip');
    expect(locateBzImagePayload(fakeBzImage(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 0, 0]), 1)).compression).toBe('xz');
    expect(locateBzImagePayload(fakeBzImage(Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0]), 1)).compression).toBe('zstd');
  });
  it('treats setup_sects 0 as 4, as the boot protocol says', () => {
    const image = fakeBzImage(Buffer.from([0x02, 0x21, 0x4c, 0x18, 0, 0, 0, 0]), 9, 4);
    image[0x1f1] = 0;
    expect(locateBzImagePayload(image).offset).toBe(5 * 512 + 100);
  });
  it('rejects what is not a usable bzImage', () => {
    expect(() => locateBzImagePayload(Buffer.alloc(4096))).toThrow(/HdrS/);
    expect(() => locateBzImagePayload(fakeBzImage(Buffer.alloc(8), 1, 3, 0x206))).toThrow(/older than 2.08/);
    const truncated = fakeBzImage(Buffer.alloc(64), 1).subarray(0, 2200);
    expect(() => locateBzImagePayload(truncated)).toThrow(GuestBuildError);
  });
});

describe('kernel config', () => {
  it('parses =y, =m, numbers and strings, skipping comments', () => {
    const config = parseKernelConfig('# CONFIG_9P_FS is not set\nCONFIG_PVH=y\nCONFIG_VIRTIO_NET=m\nCONFIG_HZ=250\nCONFIG_LOCALVERSION=""\n');
    expect([...config]).toEqual([
      ['CONFIG_PVH', 'y'],
      ['CONFIG_VIRTIO_NET', 'm'],
      ['CONFIG_HZ', '250'],
      ['CONFIG_LOCALVERSION', '""'],
    ]);
  });
});

describe('/init', () => {
  const text = renderInit({ kernelRelease: '6.1.0-56-cloud-amd64', modules: ['kernel/drivers/virtio/virtio.ko', 'kernel/drivers/virtio/virtio_pci.ko'] });
  const lines = text.split('\n');
  const at = (needle: string): number => lines.findIndex((l) => l.includes(needle));

  it('mounts what the agent relies on, loads modules in order, prints the marker, then execs the agent', () => {
    expect(lines[0]).toBe('#!/bin/sh');
    for (const mount of ['proc /proc', 'sysfs /sys', 'devtmpfs /dev', 'devpts /dev/pts', 'shm /dev/shm', 'run /run', 'tmp /tmp', 'cgroup2 /sys/fs/cgroup']) {
      expect(at(mount)).toBeGreaterThan(0);
    }
    expect(at('devtmpfs /dev')).toBeLessThan(at('devpts /dev/pts'));
    expect(at("load 'kernel/drivers/virtio/virtio.ko'")).toBeLessThan(at("load 'kernel/drivers/virtio/virtio_pci.ko'"));
    expect(at("insmod '/lib/modules/6.1.0-56-cloud-amd64'")).toBeGreaterThan(0);
    expect(at('ip link set lo up')).toBeLessThan(at(INIT_MARKER));
    expect(at(INIT_MARKER)).toBeLessThan(at(`exec ${GUEST_AGENT_PATH}`));
    expect(lines.slice(at(`exec ${GUEST_AGENT_PATH}`)).join('\n')).toMatch(/poweroff -f/);
    expect(renderInit({ kernelRelease: '6.1.0-56-cloud-amd64', modules: ['kernel/drivers/virtio/virtio.ko', 'kernel/drivers/virtio/virtio_pci.ko'] })).toBe(text);
  });
  it('refuses module paths that could break out of the script', () => {
    expect(() => renderInit({ kernelRelease: '6.1', modules: ["a'; reboot; '"] })).toThrow(/unsafe/);
    expect(() => renderInit({ kernelRelease: '$(reboot)', modules: [] })).toThrow(/unsafe/);
  });
});

describe('checkGuestExecutable', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-exe-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('accepts a static ELF and a #!/bin/sh script', async () => {
    await expect(checkGuestExecutable('/bin/busybox', 'busybox', 'fix')).resolves.toBeUndefined();
    const script = path.join(dir, 'agent');
    fs.writeFileSync(script, '#!/bin/sh\necho hi\n', { mode: 0o755 });
    await expect(checkGuestExecutable(script, 'agent', 'fix')).resolves.toBeUndefined();
  });
  it('rejects a dynamic ELF, a missing file, a non-executable and garbage, naming the fix', async () => {
    await expect(checkGuestExecutable('/bin/ls', 'agent', 'fix')).rejects.toThrow(/dynamically linked/);
    await expect(checkGuestExecutable(path.join(dir, 'none'), 'the guest agent', 'build it')).rejects.toThrow(/not found at .*: build it/);
    const plain = path.join(dir, 'plain');
    fs.writeFileSync(plain, 'x', { mode: 0o644 });
    await expect(checkGuestExecutable(plain, 'agent', 'fix')).rejects.toThrow(/not an executable/);
    fs.chmodSync(plain, 0o755);
    fs.writeFileSync(plain, 'garbage'.repeat(20));
    await expect(checkGuestExecutable(plain, 'agent', 'fix')).rejects.toThrow(/neither an x86-64 ELF/);
  });
});
