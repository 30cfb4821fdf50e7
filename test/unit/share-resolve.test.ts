// resolveOutsideGuest: a bind source is resolved as the kernel would, and refused when any name on
// the way is looked up in a folder the guest can write (a read-write bind's source, or below it).
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { resolveOutsideGuest } from '../../src/sandbox/resources/share.js';

describe('resolveOutsideGuest', () => {
  let top: string;
  let data: string; // bound read-write: the guest's
  let canary: string;

  beforeAll(async () => {
    top = await fs.realpath(await fs.mkdtemp(path.join(os.tmpdir(), 'vt-resolve-')));
    data = path.join(top, 'data');
    canary = path.join(top, 'canary');
    await fs.mkdir(path.join(data, 'real'), { recursive: true });
    await fs.mkdir(canary);
    await fs.mkdir(path.join(top, 'host', 'dir'), { recursive: true });
    await fs.symlink(canary, path.join(data, 'sub')); // what a guest makes
    await fs.symlink(data, path.join(top, 'to-data')); // what a user makes
    await fs.symlink('../host/dir', path.join(top, 'canary', 'rel')); // a relative link outside the guest's reach
    await fs.symlink('to-data/sub', path.join(top, 'chain'));
    await fs.symlink('loop', path.join(top, 'loop'));
  });
  afterAll(async () => {
    await fs.rm(top, { recursive: true, force: true });
  });

  it('resolves paths and links that never pass through a guest folder', async () => {
    expect(await resolveOutsideGuest(path.join(top, 'host', 'dir'), [data])).toBe(path.join(top, 'host', 'dir'));
    expect(await resolveOutsideGuest(path.join(top, 'canary', 'rel'), [data])).toBe(path.join(top, 'host', 'dir'));
    expect(await resolveOutsideGuest(`${top}/host/./dir/../dir`, [data])).toBe(path.join(top, 'host', 'dir'));
    // The guest's folder itself may be shared again (the guest can change what is in it, not where it is).
    expect(await resolveOutsideGuest(data, [data])).toBe(data);
    expect(await resolveOutsideGuest(path.join(top, 'to-data'), [data])).toBe(data);
    // Without guest folders, links are followed wherever they go.
    expect(await resolveOutsideGuest(path.join(data, 'sub'), [])).toBe(canary);
  });

  it('refuses a path looked up inside a guest folder, with or without a link there', async () => {
    for (const source of [
      path.join(data, 'sub'), // the guest's link to the canary
      path.join(data, 'real'), // a real folder today, a link tomorrow
      path.join(top, 'to-data', 'sub'), // through the user's link to the guest's folder
      path.join(top, 'chain'), // a chain of links that passes through it
    ]) {
      const error = await resolveOutsideGuest(source, [data]).catch((e: unknown) => e);
      expect(error, source).toBeInstanceOf(InvalidArgumentError);
      expect((error as InvalidArgumentError).message).toContain(`inside ${data}, which is bound read-write into this sandbox`);
    }
  });

  it('refuses loops and missing paths with a typed error', async () => {
    await expect(resolveOutsideGuest(path.join(top, 'loop'), [])).rejects.toThrow('more than 40 symbolic links');
    await expect(resolveOutsideGuest(path.join(top, 'nope', 'x'), [])).rejects.toBeInstanceOf(InvalidArgumentError);
  });
});
