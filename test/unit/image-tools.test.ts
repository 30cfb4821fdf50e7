/**
 * Cross-check with the tools that write images for real (offline): umoci builds a layout,
 * skopeo copies it into an OCI archive, a Docker archive and a zstd-compressed layout; vmpod
 * reads each, streams every layer through its checks, and converts the config as umoci does.
 * Skipped, saying so, when umoci or skopeo is not installed (scripts/setup-host.sh installs both).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImageSource } from '../../src/image/open.js';
import { imageRuntimeSpec } from '../../src/image/runtime-spec.js';
import type { ImageSource } from '../../src/image/source.js';

function found(tool: string): boolean {
  try {
    execFileSync(tool, ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
const ready = found('umoci') && found('skopeo');
const rootless = process.getuid?.() === 0 ? [] : ['--rootless'];

let dir: string;
const run = (tool: string, args: string[]): string => execFileSync(tool, args, { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

/** Streams every layer; returns the sha256 of each uncompressed tar (the stream checks the same itself). */
async function layerHashes(source: ImageSource): Promise<string[]> {
  const hashes: string[] = [];
  for (const layer of source.layers) {
    const hash = createHash('sha256');
    for await (const chunk of source.openLayer(layer.index)) hash.update(chunk as Buffer);
    hashes.push(`sha256:${hash.digest('hex')}`);
  }
  return hashes;
}

describe.skipIf(!ready)(`images written by umoci and skopeo (${ready ? 'both installed' : 'skipped: umoci or skopeo is not installed; scripts/setup-host.sh installs them'})`, () => {
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-h1-tools-'));
    await fs.mkdir(path.join(dir, 'src'));
    await fs.writeFile(path.join(dir, 'src', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n');
    await fs.writeFile(path.join(dir, 'src', 'group'), 'root:x:0:\napp:x:1000:\nwheel:x:10:app\n');
    await fs.writeFile(path.join(dir, 'src', 'motd'), 'hello from a layer\n');
    run('umoci', ['init', '--layout', 'A']);
    run('umoci', ['new', '--image', 'A:t']);
    run('umoci', ['insert', ...rootless, '--image', 'A:t', 'src/passwd', '/etc/passwd']);
    run('umoci', ['insert', ...rootless, '--image', 'A:t', 'src/group', '/etc/group']);
    run('umoci', ['insert', ...rootless, '--image', 'A:t', 'src/motd', '/etc/motd']);
    run('umoci', [
      'config', '--image', 'A:t', '--config.user=app', '--config.entrypoint=/bin/app', '--config.cmd=serve', '--config.env=A=1',
      '--config.workingdir=/srv', '--config.label=com.example.k=v', '--config.exposedports=8080/tcp', '--config.stopsignal=SIGQUIT',
    ]);
  });
  afterAll(async () => {
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  it('reads umoci\'s layout: the manifest index.json names, the config, three layers that pass their checks', async () => {
    const index = JSON.parse(await fs.readFile(path.join(dir, 'A', 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
    await using source = await openImageSource(`oci:${path.join(dir, 'A')}:t`);
    expect(source.manifestDigest).toBe(index.manifests[0]!.digest);
    expect(source.config.config).toMatchObject({ User: 'app', Entrypoint: ['/bin/app'], Cmd: ['serve'], WorkingDir: '/srv', Labels: { 'com.example.k': 'v' }, StopSignal: 'SIGQUIT' });
    expect(source.layers).toHaveLength(3);
    expect(source.layers.every((l) => l.compression === 'gzip')).toBe(true);
    expect(await layerHashes(source)).toEqual(source.config.rootfs.diff_ids);
  });

  it('converts the config as umoci unpack does (args, cwd, user with groups, annotations)', async () => {
    run('umoci', ['unpack', ...rootless, '--image', 'A:t', 'bundle']);
    const theirs = JSON.parse(await fs.readFile(path.join(dir, 'bundle', 'config.json'), 'utf8')) as {
      process: { args: string[]; cwd: string; env: string[]; user: { uid: number; gid: number; additionalGids?: number[] } };
      annotations: Record<string, string>;
    };
    await using source = await openImageSource(`oci:${path.join(dir, 'A')}:t`);
    const ours = imageRuntimeSpec(source.config, {
      passwd: await fs.readFile(path.join(dir, 'bundle', 'rootfs', 'etc', 'passwd'), 'utf8'),
      group: await fs.readFile(path.join(dir, 'bundle', 'rootfs', 'etc', 'group'), 'utf8'),
    });
    expect(ours.process.args).toEqual(theirs.process.args);
    expect(ours.process.cwd).toBe(theirs.process.cwd);
    expect(ours.process.user).toEqual(theirs.process.user);
    expect(ours.process.env).toEqual(expect.arrayContaining(theirs.process.env.filter((e) => /^(A|PATH|HOME)=/u.test(e))));
    for (const key of ['org.opencontainers.image.stopSignal', 'org.opencontainers.image.exposedPorts', 'org.opencontainers.image.os', 'org.opencontainers.image.architecture', 'com.example.k']) {
      expect((ours.annotations as Record<string, string> | undefined)?.[key]).toBe(theirs.annotations[key]);
    }
  });

  it('reads what skopeo copies: an OCI archive, a Docker archive (by tag, alone, by @0), a zstd layout', async () => {
    await using layout = await openImageSource(`oci:${path.join(dir, 'A')}:t`);
    const diffIds = layout.config.rootfs.diff_ids;
    run('skopeo', ['--insecure-policy', 'copy', 'oci:A:t', 'oci-archive:B.tar:t']);
    {
      await using archive = await openImageSource(`oci-archive:${path.join(dir, 'B.tar')}:t`);
      expect(archive.manifestDigest).toBe(layout.manifestDigest);
      expect(await layerHashes(archive)).toEqual(diffIds);
    }
    run('skopeo', ['--insecure-policy', 'copy', 'oci:A:t', 'docker-archive:C.tar:example/app:1']);
    for (const ref of [':example/app:1', ':docker.io/example/app:1', '', ':@0']) {
      await using docker = await openImageSource(`docker-archive:${path.join(dir, 'C.tar')}${ref}`);
      expect(docker.config.rootfs.diff_ids).toEqual(diffIds);
      expect(docker.config.config.Entrypoint).toEqual(['/bin/app']);
      expect(docker.layers.every((l) => l.compression === 'none' && l.digest === l.diffId)).toBe(true);
      expect(await layerHashes(docker)).toEqual(diffIds);
    }
    run('skopeo', ['--insecure-policy', 'copy', '--dest-compress', '--dest-compress-format', 'zstd', 'oci:A:t', 'oci:Z:t']);
    await using zstd = await openImageSource(`oci:${path.join(dir, 'Z')}:t`);
    expect(zstd.layers.map((l) => l.mediaType)).toEqual(diffIds.map(() => 'application/vnd.oci.image.layer.v1.tar+zstd'));
    expect(await layerHashes(zstd)).toEqual(diffIds);
  });
});
