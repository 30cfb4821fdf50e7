import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { adaptSpecForGuest, applyOverrides, checkOverrides, defaultSpec, InvalidBundleError, readBundle } from '../../src/container/spec.js';
import { InvalidArgumentError, NotFoundError } from '../../src/errors.js';

describe('OCI specs on the host', () => {
  it('builds a default spec like runc spec, with Docker capabilities', () => {
    const spec = defaultSpec({ args: ['sh'], hostname: 'h' });
    expect(spec.process.args).toEqual(['sh']);
    expect(spec.process.capabilities?.bounding).toContain('CAP_NET_BIND_SERVICE');
    expect(spec.process.capabilities?.bounding).not.toContain('CAP_SYS_ADMIN');
    expect(spec.linux?.namespaces?.map((n) => n.type)).toEqual(['pid', 'ipc', 'uts', 'mount']);
    expect(spec.mounts?.map((m) => m.destination)).toContain('/proc');
  });
  it('applies overrides without touching the original, replacing same-named env vars', () => {
    const spec = defaultSpec({ args: ['sh'], hostname: 'h' });
    const next = applyOverrides(spec, { args: ['ls'], env: ['TERM=vt100', 'X=1'], cwd: '/tmp', user: { uid: 5, gid: 6 } });
    expect(next.process.args).toEqual(['ls']);
    expect(next.process.env?.filter((e) => e.startsWith('TERM='))).toEqual(['TERM=vt100']);
    expect(next.process.env).toContain('X=1');
    expect(next.process.user).toMatchObject({ uid: 5, gid: 6 });
    expect(spec.process.args).toEqual(['sh']);
  });
  it('rejects bad overrides', () => {
    expect(() => checkOverrides({ args: [] })).toThrow(InvalidArgumentError);
    expect(() => checkOverrides({ env: ['NOEQUALS'] })).toThrow(/KEY=VALUE/);
    expect(() => checkOverrides({ cwd: 'rel' })).toThrow(/absolute/);
    expect(() => checkOverrides({ user: { uid: -1, gid: 0 } })).toThrow(/uid/);
  });
  it('adapts a spec for the VM: no network namespace, host bind sources to share', () => {
    const spec = defaultSpec({ args: ['sh'], hostname: 'h' });
    spec.linux!.namespaces!.push({ type: 'network', path: '/var/run/netns/x' });
    spec.mounts!.push({ destination: '/data', type: 'bind', source: '/srv/data', options: ['rbind', 'ro'] });
    const { spec: adapted, shares } = adaptSpecForGuest(spec);
    expect(adapted.linux?.namespaces?.map((n) => n.type)).not.toContain('network');
    expect(shares).toEqual([{ index: spec.mounts!.length - 1, source: '/srv/data', readOnly: true }]);
    spec.mounts!.push({ destination: '/x', type: 'bind', source: 'relative' });
    expect(() => adaptSpecForGuest(spec)).toThrow(InvalidArgumentError);
  });
  it('reads bundles and rejects bad ones', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-bundle-'));
    try {
      await expect(readBundle(path.join(dir, 'missing'))).rejects.toBeInstanceOf(NotFoundError);
      await expect(readBundle(dir)).rejects.toThrow(/config.json cannot be read/);
      await fs.writeFile(path.join(dir, 'config.json'), JSON.stringify({ ociVersion: '1.0.2', process: { args: ['sh'] } }));
      await expect(readBundle(dir)).rejects.toThrow(/root.path rootfs is not a directory/);
      await fs.mkdir(path.join(dir, 'rootfs'));
      expect((await readBundle(dir)).rootfs).toBe(path.join(dir, 'rootfs'));
      for (const bad of ['[]', '{"ociVersion":1}', '{"ociVersion":"1","process":{"args":"sh"}}', '{"ociVersion":"1","process":{"args":["sh"],"cwd":"rel"}}']) {
        await fs.writeFile(path.join(dir, 'config.json'), bad);
        await expect(readBundle(dir), bad).rejects.toBeInstanceOf(InvalidBundleError);
      }
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
