import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { adaptSpecForGuest, applyOverrides, checkOverrides, defaultSpec, execFailure, execStateFailure, InvalidBundleError, readBundle } from '../../src/container/spec.js';
import { ExecFailedError, InvalidArgumentError, NotFoundError } from '../../src/errors.js';
import { AgentError } from '../../src/agent/errors.js';

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
  it('gives a terminal only when the user asks for one, whatever the spec says (runc spec writes terminal: true)', () => {
    const runcSpec = defaultSpec({ args: ['sh'], hostname: 'h' });
    runcSpec.process.terminal = true;
    expect(applyOverrides(runcSpec, {}).process.terminal).toBe(false);
    expect(applyOverrides(runcSpec, { args: ['ls'] }).process.terminal).toBe(false);
    expect(applyOverrides(runcSpec, { terminal: false }).process.terminal).toBe(false);
    expect(applyOverrides(runcSpec, { terminal: true }).process.terminal).toBe(true);
    expect(applyOverrides(defaultSpec({ args: ['sh'], hostname: 'h' }), { terminal: true }).process.terminal).toBe(true);
    expect(runcSpec.process.terminal).toBe(true); // the original is untouched
  });
  it('turns the agent\'s answer for a command it could not execute into an ExecFailedError without the RPC name', () => {
    const label = 'container "web" in sandbox "web"';
    const notInPath = new AgentError('StartContainer', 'NOT_FOUND', 'web: executable "nosuch" not found in $PATH (/usr/bin:/bin)', 'ENOENT');
    const missing = execFailure(notInPath, label);
    expect(missing).toBeInstanceOf(ExecFailedError);
    expect(missing).toMatchObject({ code: 'ERR_VMPOD_COMMAND_NOT_FOUND', reason: 'not-found', command: 'nosuch', message: 'container "web" in sandbox "web": command "nosuch" not found in $PATH (/usr/bin:/bin)' });
    expect(missing!.message).not.toContain('StartContainer');
    expect(missing!.cause).toBe(notInPath);
    const noFile = execFailure(new AgentError('Exec', 'NOT_FOUND', 'web/exec-1: exec /opt/none: No such file or directory', 'ENOENT'), label);
    expect(noFile).toMatchObject({ reason: 'not-found', command: '/opt/none', message: 'container "web" in sandbox "web": command "/opt/none" not found' });
    const denied = execFailure(new AgentError('Exec', 'INTERNAL', 'web/exec-1: exec /etc/passwd: Permission denied', 'EACCES'), label);
    expect(denied).toMatchObject({ code: 'ERR_VMPOD_COMMAND_NOT_EXECUTABLE', reason: 'not-executable', command: '/etc/passwd', message: 'container "web" in sandbox "web": cannot execute "/etc/passwd": Permission denied' });
    // Anything else is not about the command: left as it is.
    expect(execFailure(new AgentError('Exec', 'NOT_FOUND', 'web/exec-1: chdir to process.cwd /nope: No such file or directory', 'ENOENT'), label)).toBeUndefined();
    expect(execFailure(new AgentError('CreateContainer', 'NOT_FOUND', 'web: executable "x" not found in $PATH (/bin)', 'ENOENT'), label)).toBeUndefined();
    expect(execFailure(new Error('web: executable "x" not found in $PATH (/bin)'), label)).toBeUndefined();
  });
  it('turns the agent\'s answer for an exec into a container that does not run into a state error that says so', () => {
    const label = 'container "job" in sandbox "web"';
    const exited = execStateFailure(new AgentError('Exec', 'FAILED_PRECONDITION', 'container "job" is stopped, not running'), label);
    expect(exited).toMatchObject({ code: 'ERR_VMPOD_INVALID_STATE', from: 'stopped', to: 'running', message: 'container "job" in sandbox "web" has exited: exec needs it running' });
    expect(execStateFailure(new AgentError('Exec', 'FAILED_PRECONDITION', 'container "job" is created, not running'), label)!.message).toBe(
      'container "job" in sandbox "web" has not been started: exec needs it running',
    );
    expect(execStateFailure(new AgentError('Exec', 'FAILED_PRECONDITION', 'the agent is shutting down'), label)).toBeUndefined();
    expect(execStateFailure(new AgentError('Signal', 'FAILED_PRECONDITION', 'container "job" is stopped, not running'), label)).toBeUndefined();
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
