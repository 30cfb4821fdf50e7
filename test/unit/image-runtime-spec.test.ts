import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { defaultSpec } from '../../src/container/spec.js';
import type { ImageConfig, ImageExecConfig } from '../../src/image/config.js';
import { InvalidImageError } from '../../src/image/errors.js';
import { imageRuntimeSpec, parseGroup, parsePasswd, resolveUser } from '../../src/image/runtime-spec.js';

const PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

function image(exec: ImageExecConfig, extra: Partial<ImageConfig> = {}, raw: Record<string, unknown> = {}): ImageConfig {
  return { architecture: 'amd64', os: 'linux', config: exec, rootfs: { type: 'layers', diff_ids: [] }, raw, ...extra };
}

const passwd = [
  'root:x:0:0:root:/root:/bin/sh',
  '# a comment',
  'broken line',
  'daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin',
  'app:x:1000:1000:App:/home/app:/bin/sh',
  'other:x:1001:1001::/nonexistent:/bin/false',
  '',
].join('\n');
const group = ['root:x:0:', 'daemon:x:1:', 'app:x:1000:', 'wheel:x:10:root,app', 'audio:x:29:other , app', 'video:x:44:other', 'staff:x:50:'].join('\n');

describe('image config → runtime spec (image-spec conversion.md)', () => {
  it('args = Entrypoint ++ Cmd; Entrypoint only; Cmd only; neither is an error', () => {
    expect(imageRuntimeSpec(image({ Entrypoint: ['/bin/app', '--flag'], Cmd: ['serve', 'x'] })).process.args).toEqual(['/bin/app', '--flag', 'serve', 'x']);
    expect(imageRuntimeSpec(image({ Entrypoint: ['/bin/app'] })).process.args).toEqual(['/bin/app']);
    expect(imageRuntimeSpec(image({ Cmd: ['/bin/sh', '-c', 'echo'] })).process.args).toEqual(['/bin/sh', '-c', 'echo']);
    expect(() => imageRuntimeSpec(image({}))).toThrow(InvalidImageError);
    expect(() => imageRuntimeSpec(image({ Entrypoint: [], Cmd: [] }))).toThrow(/neither Entrypoint nor Cmd/u);
  });

  it('overrides: cmd replaces Cmd and keeps Entrypoint; entrypoint replaces Entrypoint', () => {
    const config = image({ Entrypoint: ['/bin/app'], Cmd: ['default'] });
    expect(imageRuntimeSpec(config, { cmd: ['other', 'args'] }).process.args).toEqual(['/bin/app', 'other', 'args']);
    expect(imageRuntimeSpec(config, { entrypoint: [], cmd: ['sh'] }).process.args).toEqual(['sh']);
    expect(imageRuntimeSpec(config, { entrypoint: ['/bin/other'] }).process.args).toEqual(['/bin/other', 'default']);
    expect(() => imageRuntimeSpec(config, { cmd: 'sh' as unknown as string[] })).toThrow(InvalidArgumentError);
  });

  it('Env kept verbatim, with PATH and TERM added only when missing; env overrides replace by name', () => {
    expect(imageRuntimeSpec(image({ Cmd: ['x'] })).process.env).toEqual([PATH, 'TERM=dumb']);
    expect(imageRuntimeSpec(image({ Cmd: ['x'], Env: ['PATH=/opt/bin', 'A=1', 'TERM=vt100'] })).process.env).toEqual(['PATH=/opt/bin', 'A=1', 'TERM=vt100']);
    expect(imageRuntimeSpec(image({ Cmd: ['x'], Env: ['A=1', 'B=2'] }), { env: ['B=3', 'C=4'] }).process.env).toEqual(['A=1', PATH, 'TERM=dumb', 'B=3', 'C=4']);
    expect(imageRuntimeSpec(image({ Cmd: ['x'] }), { terminal: true, hostname: 'box' }).process.env).toEqual([PATH, 'TERM=xterm', 'HOSTNAME=box']);
    expect(() => imageRuntimeSpec(image({ Cmd: ['x'] }), { env: ['NOEQUALS'] })).toThrow(InvalidArgumentError);
  });

  it('cwd = WorkingDir, "/" without one (a relative WorkingDir is taken from "/", as Docker does)', () => {
    expect(imageRuntimeSpec(image({ Cmd: ['x'] })).process.cwd).toBe('/');
    expect(imageRuntimeSpec(image({ Cmd: ['x'], WorkingDir: '/srv/app' })).process.cwd).toBe('/srv/app');
    expect(imageRuntimeSpec(image({ Cmd: ['x'], WorkingDir: 'srv/../app' })).process.cwd).toBe('/app');
    expect(imageRuntimeSpec(image({ Cmd: ['x'], WorkingDir: '/srv' }), { cwd: '/tmp' }).process.cwd).toBe('/tmp');
    expect(() => imageRuntimeSpec(image({ Cmd: ['x'] }), { cwd: 'tmp' })).toThrow(InvalidArgumentError);
  });

  it('User by name: uid and gid from /etc/passwd, additional gids from the groups that list it, HOME', () => {
    const spec = imageRuntimeSpec(image({ Cmd: ['x'], User: 'app' }), { passwd, group });
    expect(spec.process.user).toEqual({ uid: 1000, gid: 1000, additionalGids: [10, 29] });
    expect(spec.process.env).toEqual([PATH, 'TERM=dumb', 'HOME=/home/app']);
    expect(imageRuntimeSpec(image({ Cmd: ['x'], User: 'app', Env: ['HOME=/data'] }), { passwd, group }).process.env).toEqual(['HOME=/data', PATH, 'TERM=dumb']);
  });

  it('User name:group and uid:gid: the group sets the gid, no additional gids', () => {
    expect(imageRuntimeSpec(image({ Cmd: ['x'], User: 'app:staff' }), { passwd, group }).process.user).toEqual({ uid: 1000, gid: 50 });
    expect(imageRuntimeSpec(image({ Cmd: ['x'], User: '1000:44' }), { passwd, group }).process.user).toEqual({ uid: 1000, gid: 44 });
    expect(imageRuntimeSpec(image({ Cmd: ['x'], User: '4242:video' }), { passwd, group }).process.user).toEqual({ uid: 4242, gid: 44 });
  });

  it('numeric User: verbatim; its passwd entry (when it has one) gives gid and groups; not in passwd → gid 0', () => {
    expect(imageRuntimeSpec(image({ Cmd: ['x'], User: '1001' }), { passwd, group }).process.user).toEqual({ uid: 1001, gid: 1001, additionalGids: [29, 44] });
    expect(imageRuntimeSpec(image({ Cmd: ['x'], User: '4242' }), { passwd, group }).process.user).toEqual({ uid: 4242, gid: 0 });
    expect(imageRuntimeSpec(image({ Cmd: ['x'], User: '4242' })).process.user).toEqual({ uid: 4242, gid: 0 });
    expect(imageRuntimeSpec(image({ Cmd: ['x'] }), { passwd, group }).process.user).toEqual({ uid: 0, gid: 0 });
  });

  it('a User the image does not have is a typed error; a --user override that fails is InvalidArgumentError', () => {
    expect(() => imageRuntimeSpec(image({ Cmd: ['x'], User: 'nobody' }), { passwd, group })).toThrow(/config.User "nobody": no user "nobody" in the image's \/etc\/passwd/u);
    expect(() => imageRuntimeSpec(image({ Cmd: ['x'], User: 'app' }))).toThrow(/the image has no \/etc\/passwd/u);
    expect(() => imageRuntimeSpec(image({ Cmd: ['x'], User: 'app:nogroup' }), { passwd, group })).toThrow(InvalidImageError);
    expect(() => imageRuntimeSpec(image({ Cmd: ['x'], User: '99999999999' }), { passwd, group })).toThrow(/out of range/u);
    expect(() => imageRuntimeSpec(image({ Cmd: ['x'], User: ':10' }), { passwd, group })).toThrow(/names no user/u);
    const error = (() => {
      try {
        imageRuntimeSpec(image({ Cmd: ['x'] }), { passwd, group, user: 'ghost' });
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect((error as InvalidArgumentError).field).toBe('user');
    expect(imageRuntimeSpec(image({ Cmd: ['x'], User: 'nobody' }), { passwd, group, user: 'daemon' }).process.user).toEqual({ uid: 1, gid: 1 });
  });

  it('annotations: the implicit ones, Labels over them, ExposedPorts sorted and joined', () => {
    const config = image(
      { Cmd: ['x'], StopSignal: 'SIGQUIT', ExposedPorts: { '8080/tcp': {}, '53/udp': {} }, Volumes: { '/data': {} }, Labels: { 'org.opencontainers.image.architecture': 'x86_64-label', 'com.example.k': 'v' } },
      { variant: 'v3', author: 'me', created: '2026-01-01T00:00:00Z' },
      { 'os.version': '6.1', 'os.features': ['a', 'b'] },
    );
    expect(imageRuntimeSpec(config).annotations).toEqual({
      'org.opencontainers.image.os': 'linux',
      'org.opencontainers.image.architecture': 'x86_64-label',
      'org.opencontainers.image.variant': 'v3',
      'org.opencontainers.image.os.version': '6.1',
      'org.opencontainers.image.os.features': 'a,b',
      'org.opencontainers.image.author': 'me',
      'org.opencontainers.image.created': '2026-01-01T00:00:00Z',
      'org.opencontainers.image.stopSignal': 'SIGQUIT',
      'org.opencontainers.image.exposedPorts': '53/udp,8080/tcp',
      'com.example.k': 'v',
    });
    expect(imageRuntimeSpec(image({ Cmd: ['x'] })).annotations).toEqual({ 'org.opencontainers.image.os': 'linux', 'org.opencontainers.image.architecture': 'amd64' });
  });

  it('the rest is the default spec (runc spec with Docker capabilities): mounts, namespaces, capabilities, rlimits, root', () => {
    const spec = imageRuntimeSpec(image({ Cmd: ['x'] }));
    const base = defaultSpec({ args: ['x'], hostname: 'h' });
    expect(spec.mounts).toEqual(base.mounts);
    expect(spec.linux).toEqual(base.linux);
    expect(spec.root).toEqual({ path: 'rootfs', readonly: false });
    expect(spec.process.capabilities).toEqual(base.process.capabilities);
    expect(spec.process.rlimits).toEqual(base.process.rlimits);
    expect(spec.process.noNewPrivileges).toBe(true);
    expect(spec.process.terminal).toBe(false);
    expect(spec.hostname).toBeUndefined();
    expect(imageRuntimeSpec(image({ Cmd: ['x'] }), { hostname: 'web' }).hostname).toBe('web');
  });

  it('parsers skip what libc skips; resolveUser on its own', () => {
    expect(parsePasswd(passwd).map((e) => e.name)).toEqual(['root', 'daemon', 'app', 'other']);
    expect(parseGroup('a:x:1:u,v\nbad\nb:x:nope:\n').map((g) => [g.name, g.members])).toEqual([['a', ['u', 'v']]]);
    const fail = (problem: string): never => {
      throw new Error(problem);
    };
    expect(resolveUser('', {}, fail)).toEqual({ uid: 0, gid: 0 });
    expect(resolveUser('root', { passwd, group }, fail)).toEqual({ uid: 0, gid: 0, additionalGids: [10], home: '/root' });
  });
});
