// Hot-plugged hugepages volumes share the pages the guest kernel reserved at boot: a new one
// must fit in what the others have not already been promised.
import os from 'node:os';
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { resolveSandboxConfig } from '../../src/sandbox/config.js';
import { VolumesResource, hotplugVolume, volumesState } from '../../src/sandbox/resources/volumes/index.js';
import { memoryContext, withGuest } from './resource-context.js';

describe('hugepages volumes hot plugged', () => {
  it('mount what fits beside the others, and refuse what would overcommit the guest pages, before any mount', async () => {
    const mounts: unknown[] = [];
    const config = resolveSandboxConfig({ memoryMiB: 256, hugepages: { backRam: false, guestPages: 8 } });
    const { ctx, record } = memoryContext(new VolumesResource(), { dir: os.tmpdir(), config });
    const guest = withGuest(ctx, { agent: { mount: async (request: unknown) => void mounts.push(request) }, vm: {} });
    await hotplugVolume(guest, { kind: 'hugepages', name: 'a', sizeMiB: 8 }); // 4 of the 8 pages
    const second = await hotplugVolume(guest, { kind: 'hugepages', name: 'b', sizeMiB: 8 }); // the other 4
    expect(mounts).toHaveLength(2);
    expect(second.guestPath).toBe('/run/vmpod/volumes/b');
    const error = await hotplugVolume(guest, { kind: 'hugepages', name: 'c', sizeMiB: 2 }).catch((e: unknown) => e); // one too many
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect((error as Error).message).toMatch(/reserved 8 hugepages .* 8 of them for other hugepages volumes: 1 more do not fit/u);
    expect(mounts).toHaveLength(2);
    expect(volumesState(record.state).volumes.map((v) => v.spec.name)).toEqual(['a', 'b']);
  });
});
