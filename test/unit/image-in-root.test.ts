import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { readFileInRoot } from '../../src/image/in-root.js';
import { InvalidImageError } from '../../src/image/errors.js';

// A root with symlinks that would reach the host's files if they were followed as the host sees
// them, and a "host" file next to the root that the reads must never return.
let base: string;
let root: string;

beforeEach(async () => {
  base = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-inroot-'));
  root = path.join(base, 'root');
  await fs.mkdir(path.join(root, 'etc'), { recursive: true });
  await fs.writeFile(path.join(base, 'secret'), 'host secret\n');
  await fs.writeFile(path.join(root, 'etc', 'passwd.real'), 'root:x:0:0::/root:/bin/sh\n');
  await fs.writeFile(path.join(root, 'secret'), 'the image\'s own secret\n');
});
afterEach(async () => {
  await fs.rm(base, { recursive: true, force: true });
});

describe('readFileInRoot', () => {
  it('reads a file, through an absolute symlink resolved inside the root', async () => {
    await fs.symlink('/etc/passwd.real', path.join(root, 'etc', 'passwd'));
    expect((await readFileInRoot(root, '/etc/passwd', 4096))?.toString()).toBe('root:x:0:0::/root:/bin/sh\n');
    expect((await readFileInRoot(root, 'etc/passwd.real', 4096))?.toString()).toBe('root:x:0:0::/root:/bin/sh\n');
  });

  it('keeps `..` in symlinks and in the path itself inside the root', async () => {
    await fs.symlink('../../../../../secret', path.join(root, 'etc', 'up'));
    await fs.symlink(path.join(base, 'secret'), path.join(root, 'etc', 'hostpath'));
    expect((await readFileInRoot(root, 'etc/up', 4096))?.toString()).toBe('the image\'s own secret\n');
    expect((await readFileInRoot(root, '../../secret', 4096))?.toString()).toBe('the image\'s own secret\n');
    // The host's absolute path of the secret means base/root/<that path> inside the root: absent.
    expect(await readFileInRoot(root, 'etc/hostpath', 4096)).toBeNull();
  });

  it('is null for a missing file, a dangling symlink and a path through a regular file', async () => {
    await fs.symlink('/nowhere', path.join(root, 'etc', 'dangling'));
    expect(await readFileInRoot(root, '/etc/group', 4096)).toBeNull();
    expect(await readFileInRoot(root, '/etc/dangling', 4096)).toBeNull();
    expect(await readFileInRoot(root, '/etc/passwd.real/x', 4096)).toBeNull();
  });

  it('refuses a fifo without blocking, a directory, and a file over the limit', async () => {
    execFileSync('mkfifo', [path.join(root, 'etc', 'group')]);
    await expect(readFileInRoot(root, '/etc/group', 4096)).rejects.toThrow(InvalidImageError);
    await expect(readFileInRoot(root, '/etc', 4096)).rejects.toThrow(/not a regular file/u);
    await expect(readFileInRoot(root, '/etc/passwd.real', 10)).rejects.toThrow(/larger than 10 bytes/u);
    expect((await readFileInRoot(root, '/etc/passwd.real', 26))?.length).toBe(26);
  });

  it('refuses a magic link', async () => {
    await fs.symlink('/proc/self/root/etc/hostname', path.join(root, 'etc', 'magic'));
    // Resolved inside the root, /proc is the image's (absent): nothing of the host's is read.
    expect(await readFileInRoot(root, '/etc/magic', 4096)).toBeNull();
    await expect(readFileInRoot('/', 'proc/self/root/etc/hostname', 4096)).rejects.toMatchObject({ errnoName: 'ELOOP' });
  });
});
