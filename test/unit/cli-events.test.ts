/**
 * `vmpod events`: its option parsing and line formats, and the built command against a fake
 * state directory (records written by rename, as vmpod writes them), ended by SIGINT.
 * The spawned part needs the TypeScript build (`npx tsc -p tsconfig.json`).
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { eventJson, eventText, filterOption, keeps, sinceOption } from '../../src/cli/commands/events.js';
import { UsageError } from '../../src/cli/io.js';
import { RECORD_FORMAT, type SandboxRecord } from '../../src/sandbox/record.js';
import { storeAt } from '../../src/sandbox/registry.js';
import { CorruptStateError } from '../../src/state/store.js';
import type { WatchEvent } from '../../src/sandbox/watch.js';

const bin = path.resolve('dist/cli/main.js');
let root: string;
beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-events-'));
});
afterEach(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

async function put(id: string, state: Exclude<SandboxRecord['state'], 'deleted'>, extra: Partial<SandboxRecord> = {}): Promise<void> {
  const now = new Date().toISOString();
  const store = storeAt(root);
  await fs.mkdir(store.dir(id), { recursive: true });
  // A sandbox keeps its creation time (a new one tells a sandbox made again under the same id).
  const createdAt = ((await store.read(id).catch(() => undefined)) as SandboxRecord | undefined)?.createdAt ?? now;
  await store.write({ format: RECORD_FORMAT, id, state, createdAt, updatedAt: now, config: { id } as SandboxRecord['config'], resources: {}, containers: {}, ...extra });
}

describe('vmpod events: options and lines', () => {
  it('takes --since as a date, Unix seconds or a duration back from now', () => {
    const now = Date.parse('2026-12-07T12:00:00Z');
    expect(sinceOption('2026-12-07T10:00:00Z', now)).toBe(Date.parse('2026-12-07T10:00:00Z'));
    expect(sinceOption('1765101600', now)).toBe(1765101600_000);
    expect(sinceOption('90s', now)).toBe(now - 90_000);
    expect(sinceOption('10m', now)).toBe(now - 600_000);
    expect(sinceOption('2h', now)).toBe(now - 7_200_000);
    expect(sinceOption('1d', now)).toBe(now - 86_400_000);
    for (const bad of ['', 'yesterday', '10y', '-5m', '1e9', 'March 3', '2026-13-45']) expect(() => sinceOption(bad, now), bad).toThrow(UsageError);
  });

  it('filters by sandbox and type: values of one key any, keys all', () => {
    const f = filterOption(['sandbox=a', 'sandbox=b', 'type=container']);
    const ev = (sandbox: string, type: 'sandbox' | 'container'): WatchEvent =>
      type === 'sandbox' ? { type, action: 'running', sandbox, time: 't' } : { type, action: 'started', sandbox, container: 'c', time: 't' };
    expect(keeps(f, ev('a', 'container'))).toBe(true);
    expect(keeps(f, ev('b', 'container'))).toBe(true);
    expect(keeps(f, ev('c', 'container'))).toBe(false);
    expect(keeps(f, ev('a', 'sandbox'))).toBe(false);
    // An error that names no sandbox may be anyone's: shown with a sandbox filter (not with a type filter that leaves errors out).
    const anon: WatchEvent = { type: 'error', time: 't', error: new Error('x') };
    expect(keeps(filterOption(['sandbox=a']), anon)).toBe(true);
    expect(keeps(f, anon)).toBe(false);
    expect(keeps(filterOption([]), ev('z', 'sandbox'))).toBe(true);
    for (const bad of ['sandbox', 'id=a', 'sandbox=../x', 'type=volume', '=a']) expect(() => filterOption([bad]), bad).toThrow();
  });

  it('prints one line per event, made printable; errors as code and message', () => {
    const exited: WatchEvent = { type: 'container', action: 'exited', sandbox: 'web', container: 'c1', time: '2026-12-07T10:00:00.000Z', exitStatus: { exitCode: 3, signal: 0, oomKilled: false } };
    expect(eventText(exited)).toBe('2026-12-07T10:00:00.000Z container exited web/c1 exitCode=3 signal=0 oomKilled=false');
    expect(JSON.parse(eventJson(exited))).toEqual(exited);
    const stopped: WatchEvent = { type: 'sandbox', action: 'stopped', sandbox: 'web', time: 'T', stopReason: { reason: 'unexpected', detail: 'SIGKILL' } };
    expect(eventText(stopped)).toBe('T sandbox stopped web reason=unexpected detail=SIGKILL');
    const device: WatchEvent = { type: 'device', action: 'added', sandbox: 'web', time: 'T', device: { kind: 'volume', id: 'data', hotplugged: true } };
    expect(eventText(device)).toBe('T device added web volume=data hotplugged=true');
    const error: WatchEvent = { type: 'error', sandbox: 'web', time: 'T', error: new CorruptStateError('/run/vmpod/sandboxes/web/state.json', 'not valid JSON\x1b[2J') };
    const text = eventText(error);
    expect(text).not.toContain('\x1b');
    expect(text).not.toContain('\n');
    expect(text).toMatch(/^T error web \/run\/vmpod\/sandboxes\/web\/state\.json: not valid JSON/u);
    expect(JSON.parse(eventJson(error))).toEqual({ type: 'error', sandbox: 'web', time: 'T', error: { code: 'ERR_VMPOD_CORRUPT_STATE', message: expect.stringContaining('not valid JSON') } });
  });
});

describe('vmpod events: the command', () => {
  it('refuses bad usage with exit code 2', () => {
    for (const args of [['--format', 'xml'], ['--filter', 'colour=red'], ['--since', 'soon'], ['extra'], ['--json', '--format', 'text']]) {
      const result = spawnSync(process.execPath, [bin, 'events', ...args], { encoding: 'utf8', env: { ...process.env, VMPOD_STATE_DIR: root }, timeout: 20_000 });
      expect(result.status, `${args.join(' ')}: ${result.stderr}`).toBe(2);
      expect(result.stderr).toMatch(args.includes('--json') ? /^\{"error":\{"code":"ERR_VMPOD_USAGE"/u : /^vmpod: /u);
    }
  });

  it('prints what another process does to the records, filtered, until SIGINT (exit 0)', async () => {
    await put('before', 'stopped');
    const child = spawn(process.execPath, [bin, 'events', '--format', 'json', '--filter', 'sandbox=web', '--filter', 'sandbox=before', '--since', '1h'], {
      env: { ...process.env, VMPOD_STATE_DIR: root },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const lines = (): { type: string; action?: string; sandbox?: string; container?: string }[] => out.split('\n').filter(Boolean).map((l) => JSON.parse(l));
    const until = async (what: string, check: () => boolean): Promise<void> => {
      for (const end = Date.now() + 15_000; !check(); await new Promise((r) => setTimeout(r, 20))) {
        if (Date.now() > end) throw new Error(`timed out waiting for ${what}; stdout: ${out}; stderr: ${err}`);
      }
    };
    try {
      // The replay (--since) shows the sandbox that was there already.
      await until('the replay', () => lines().some((l) => l.sandbox === 'before' && l.action === 'stopped'));
      await put('web', 'created');
      await put('other', 'created'); // filtered out
      await put('web', 'running', { boot: { id: 'a1b2c3d4e5f6', dir: '/nonexistent', startedAt: new Date().toISOString() }, containers: { web: { status: 'created', boot: 'a1b2c3d4e5f6', binds: [] } } });
      await until('web running', () => lines().some((l) => l.sandbox === 'web' && l.type === 'container'));
      await fs.rm(storeAt(root).dir('web'), { recursive: true });
      await until('web deleted', () => lines().some((l) => l.sandbox === 'web' && l.action === 'deleted' && l.type === 'sandbox'));
    } finally {
      child.kill('SIGINT');
    }
    expect(await exited).toBe(0);
    expect(err).toBe('');
    expect(lines().filter((l) => l.sandbox === 'web').map((l) => l), out).toHaveLength(5);
    expect(lines().filter((l) => l.sandbox === 'web').map((l) => `${l.type} ${l.action}${l.container ? ` ${l.container}` : ''}`)).toEqual([
      'sandbox created',
      'sandbox running',
      'container created web',
      'container deleted web',
      'sandbox deleted',
    ]);
    expect(lines().some((l) => l.sandbox === 'other')).toBe(false);
  });
});
