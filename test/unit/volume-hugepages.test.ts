// Hot-plugged hugepages volumes share the pages the guest kernel reserved at boot: a new one
// must fit in what the others have not already been promised.
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import type { GuestContext } from '../../src/sandbox/resource.js';
import type { VolumeState } from '../../src/volume/driver.js';
import { hugepagesDriver } from '../../src/volume/hugepages.js';

function context(guestPages: number, volumes: VolumeState[], mounts: unknown[]): GuestContext {
  return {
    config: { hugepages: { guestPages } },
    state: { volumes },
    guestStateDir: '/run/vmpod',
    agent: { mount: async (request: unknown) => void mounts.push(request) },
  } as unknown as GuestContext;
}

const volume = (name: string, sizeMiB: number): VolumeState => ({ spec: { kind: 'hugepages', name, sizeMiB }, hostMounts: [], hotplugged: true });

describe('hugepages volumes hot plugged', () => {
  it('mount what fits beside the others, and refuse what would overcommit the guest pages, before any mount', async () => {
    const mounts: unknown[] = [];
    const first = volume('a', 8); // 4 of the 8 pages
    const second = volume('b', 8); // the other 4
    const third = volume('c', 2); // one too many
    const volumes = [first];
    const save = async (): Promise<void> => undefined;
    await hugepagesDriver.hotplug(context(8, volumes, mounts), first, save);
    volumes.push(second);
    await hugepagesDriver.hotplug(context(8, volumes, mounts), second, save);
    expect(mounts).toHaveLength(2);
    expect(second.guestPath).toBe('/run/vmpod/volumes/b');
    volumes.push(third);
    const error = await hugepagesDriver.hotplug(context(8, volumes, mounts), third, save).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect((error as Error).message).toMatch(/reserved 8 hugepages .* 8 of them for other hugepages volumes: 1 more do not fit/u);
    expect(mounts).toHaveLength(2);
  });
});
