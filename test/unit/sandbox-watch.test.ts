/**
 * Sandbox.watch() on a fake state directory: records written by rename (as vmpod writes them),
 * in any order and in bursts, hostile ones written in place, folders removed; no VM.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Sandbox } from '../../src/sandbox/sandbox.js';
import { Journal, RECORD_FORMAT, type SandboxRecord } from '../../src/sandbox/record.js';
import { storeAt } from '../../src/sandbox/registry.js';
import { containerLifecycle, diffRecord, parseSince, recordContainerExit, recordContainerStarted, SandboxWatcher, type WatchEvent } from '../../src/sandbox/watch.js';
import { CorruptStateError } from '../../src/state/store.js';
import { InvalidArgumentError } from '../../src/errors.js';
import type { SandboxState } from '../../src/sandbox/state-machine.js';

let root: string;
const watchers: SandboxWatcher[] = [];
beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-watch-'));
});
afterEach(async () => {
  for (const w of watchers.splice(0)) w.close();
  await fs.rm(root, { recursive: true, force: true });
});

const BOOT = 'a1b2c3d4e5f6';
const BOOT2 = '0123456789ab';

/** A record as vmpod writes it (only what checkRecord looks at, and what the watcher reads). */
function record(id: string, state: Exclude<SandboxState, 'deleted'>, extra: Partial<SandboxRecord> = {}, createdAt = '2026-12-07T10:00:00.000Z'): SandboxRecord {
  return {
    format: RECORD_FORMAT,
    id,
    state,
    createdAt,
    updatedAt: new Date().toISOString(),
    config: { id } as SandboxRecord['config'],
    resources: {},
    containers: {},
    ...extra,
  };
}

function withBoot(r: SandboxRecord, boot = BOOT): SandboxRecord {
  r.boot = { id: boot, dir: `/nonexistent/boots/${boot}`, startedAt: r.updatedAt };
  return r;
}

const store = (): ReturnType<typeof storeAt> => storeAt(root);

/** Writes a record the way vmpod does (temp file, rename). */
async function put(r: SandboxRecord): Promise<void> {
  await fs.mkdir(store().dir(r.id), { recursive: true });
  await store().write(r);
}

function watch(options: Parameters<typeof Sandbox.watch>[0] = {}): { watcher: SandboxWatcher; events: WatchEvent[] } {
  const watcher = Sandbox.watch({ stateDir: root, rescanMs: 60_000, ...options });
  watchers.push(watcher);
  const events: WatchEvent[] = [];
  watcher.on('event', (e) => events.push(e));
  return { watcher, events };
}

async function until(what: string, check: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** An event in a short form that a test can compare. */
function brief(e: WatchEvent): string {
  switch (e.type) {
    case 'sandbox':
      return `${e.sandbox} ${e.action}${e.stopReason ? ` (${e.stopReason.reason})` : ''}`;
    case 'container':
      return `${e.sandbox}/${e.container} ${e.action}${e.exitStatus ? ` ${e.exitStatus.exitCode}` : ''}`;
    case 'device':
      return `${e.sandbox} ${e.device.kind} ${e.device.id} ${e.action}`;
    case 'error':
      return `${e.sandbox ?? '-'} error`;
  }
}

describe('Sandbox.watch', () => {
  it('follows one sandbox through its life, in order, each change once', async () => {
    const { watcher, events } = watch();
    await watcher.ready;
    const seen = (): string[] => events.map(brief);
    const wait = (line: string): Promise<void> => until(line, () => seen().includes(line));

    await put(record('web', 'created'));
    await wait('web created');
    await put(withBoot(record('web', 'starting')));
    await wait('web starting');
    const running = withBoot(record('web', 'running'));
    await put(running);
    await wait('web running');
    running.containers = { c1: { status: 'creating', boot: BOOT, binds: [] } };
    await put(running);
    running.containers = { c1: { status: 'created', boot: BOOT, binds: [] } };
    await put(running);
    await wait('web/c1 created');
    Object.assign(running.containers['c1']!, { startedAt: new Date().toISOString() });
    running.resources = { volumes: { volumes: [{ spec: { kind: 'tmpfs', name: 'scratch' }, hotplugged: true }] } };
    await put(running);
    await wait('web volume scratch added');
    Object.assign(running.containers['c1']!, { exit: { exitCode: 3, signal: 0, oomKilled: false, at: new Date().toISOString() } });
    await put(running);
    await wait('web/c1 exited 3');
    await put(record('web', 'stopped', { stopReason: { reason: 'guest', detail: 'guest-shutdown' } }));
    await wait('web stopped (guest)');
    await fs.rm(store().dir('web'), { recursive: true });
    await wait('web deleted');

    expect(seen()).toEqual([
      'web created',
      'web starting',
      'web running',
      'web/c1 created',
      'web/c1 started',
      'web volume scratch added',
      'web/c1 exited 3',
      // Out of a VM state: what went first, then the state.
      'web/c1 deleted',
      'web volume scratch removed',
      'web stopped (guest)',
      'web deleted',
    ]);
    const exited = events.find((e) => e.type === 'container' && e.action === 'exited');
    expect(exited).toMatchObject({ exitStatus: { exitCode: 3, signal: 0, oomKilled: false } });
    expect(exited).not.toHaveProperty('exitStatus.at');
  });

  it('reports a burst of writes as a subsequence of the states written, ending with the last one', async () => {
    const { watcher, events } = watch();
    await watcher.ready;
    const written: SandboxState[] = ['created'];
    await put(record('burst', 'created'));
    const cycle: Exclude<SandboxState, 'deleted'>[] = ['starting', 'running', 'paused', 'running', 'stopping', 'stopped'];
    // As fast as renames go (no fsync): writes land while the watcher reads.
    const file = path.join(store().dir('burst'), 'state.json');
    for (let i = 0; i < 20; i++) {
      for (const state of cycle) {
        await fs.writeFile(`${file}.tmp`, JSON.stringify(withBoot(record('burst', state))));
        await fs.rename(`${file}.tmp`, file);
        written.push(state);
      }
    }
    // A last state written nowhere before: lost if a write that lands during a read is not read after it.
    await fs.writeFile(`${file}.tmp`, JSON.stringify(record('burst', 'deleting')));
    await fs.rename(`${file}.tmp`, file);
    written.push('deleting');
    const last = (): string | undefined => events.filter((e) => e.type === 'sandbox').map((e) => (e as { action: string }).action).at(-1);
    await until('the last state', () => last() === 'deleting');
    // Give late reads a moment to show duplicates, if the watcher made any.
    await new Promise((resolve) => setTimeout(resolve, 200));
    const states = events.filter((e) => e.type === 'sandbox').map((e) => (e as { action: SandboxState }).action);
    expect(states[0]).toBe('created');
    for (let i = 1; i < states.length; i++) expect(states[i]).not.toBe(states[i - 1]); // each change once
    let at = 0;
    for (const state of states) {
      const found = written.indexOf(state, at);
      expect(found, `${state} after position ${at} of what was written`).toBeGreaterThanOrEqual(0);
      at = found + 1;
    }
    expect(events.filter((e) => e.type === 'error')).toEqual([]);
  });

  it('reads a record again when it changed during a read', async () => {
    const { watcher, events } = watch();
    await watcher.ready;
    await put(record('slow', 'created'));
    await until('slow created', () => events.map(brief).includes('slow created'));
    // The next read of its record is held until a newer record was written (and its change told).
    const file = path.join(store().dir('slow'), 'state.json');
    const readFile = fs.readFile.bind(fs);
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    let taken = false;
    let holding = false;
    const spy = vi.spyOn(fs, 'readFile').mockImplementation((async (name: unknown, options: unknown) => {
      if (name === file && !taken) {
        taken = true;
        const text = await readFile(file, 'utf8'); // what the read saw: the record before the change
        holding = true;
        await held;
        return text;
      }
      return readFile(name as string, options as 'utf8');
    }) as typeof fs.readFile);
    try {
      await put(withBoot(record('slow', 'starting')));
      await until('the held read', () => holding);
      await put(withBoot(record('slow', 'running'))); // lands during the read
      await new Promise((resolve) => setTimeout(resolve, 100)); // its inotify event comes while the read is held
      release();
      await until('slow running', () => events.map(brief).includes('slow running'), 5_000);
    } finally {
      release();
      spy.mockRestore();
    }
    expect(events.map(brief)).toEqual(['slow created', 'slow starting', 'slow running']);
  });

  it('reports a corrupt or half-written record once, keeps going, and resumes from the last good one', async () => {
    const { watcher, events } = watch({ rescanMs: 50 });
    await watcher.ready;
    const good = withBoot(record('bad', 'running'));
    await put(good);
    await until('running', () => events.map(brief).includes('bad running'));
    const file = path.join(store().dir('bad'), 'state.json');
    // A hostile (or crashed, non-vmpod) writer: in place, half a record.
    const text = `${JSON.stringify(good, null, 2)}\n`;
    await fs.writeFile(file, text.slice(0, text.length / 2));
    await until('an error', () => events.some((e) => e.type === 'error'));
    // Rescans every 50 ms read the same bad file again: it is reported once.
    await new Promise((resolve) => setTimeout(resolve, 400));
    const errors = events.filter((e) => e.type === 'error');
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ sandbox: 'bad' });
    expect((errors[0] as { error: Error }).error).toBeInstanceOf(CorruptStateError);
    // Valid JSON that is no record of ours: another error (a different problem).
    await fs.writeFile(file, '{"format": 2, "id": "bad", "state": "exploded"}');
    await until('a second error', () => events.filter((e) => e.type === 'error').length === 2);
    // Another sandbox is followed meanwhile.
    await put(record('other', 'created'));
    await until('the other sandbox', () => events.map(brief).includes('other created'));
    // A good record again: the change since the last good one, and nothing replayed.
    await put(record('bad', 'stopped', { stopReason: { reason: 'unexpected', detail: 'SIGKILL' } }));
    await until('stopped', () => events.map(brief).includes('bad stopped (unexpected)'));
    expect(events.map(brief).filter((b) => b.startsWith('bad '))).toEqual(['bad created', 'bad running', 'bad error', 'bad error', 'bad stopped (unexpected)']);
  });

  it('takes a record the diff cannot read as an error, not a crash', async () => {
    const { watcher, events } = watch();
    await watcher.ready;
    // Passes the record check, but a resource's state is not what vmpod writes.
    await put(withBoot(record('odd', 'running', { resources: { 'vhost-user': { nics: 'not a list' } } })));
    await until('an event', () => events.length > 0);
    await put(withBoot(record('odd', 'paused')));
    await until('paused', () => events.map(brief).includes('odd paused'));
    expect(events.filter((e) => e.type === 'error').length).toBeLessThanOrEqual(1);
  });

  it('sees a deletion with its containers and devices, and a sandbox made again under the same id', () => {
    const first = withBoot(record('re', 'running'));
    first.containers = { c: { status: 'created', boot: BOOT, binds: [] } };
    first.resources = { volumes: { volumes: [{ spec: { kind: 'tmpfs', name: 't' }, hotplugged: false }] } };
    const a = diffRecord('re', undefined, first, 'NOW');
    expect(a.events.map(brief)).toEqual(['re created', 're running', 're/c created', 're volume t added']);
    const again = record('re', 'created', {}, '2026-12-07T11:00:00.000Z');
    const b = diffRecord('re', a.after, again, 'NOW');
    expect(b.events.map(brief)).toEqual(['re/c deleted', 're volume t removed', 're deleted', 're created']);
    expect(b.events.find((e) => e.type === 'sandbox' && e.action === 'deleted')?.time).toBe('NOW');
    const gone = diffRecord('re', b.after, undefined, 'NOW');
    expect(gone.events.map(brief)).toEqual(['re deleted']);
    expect(gone.after).toBeUndefined();
    // The same record read twice: nothing.
    expect(diffRecord('re', a.after, first, 'NOW').events).toEqual([]);
  });

  it('takes a new boot as new containers, and an exit seen before the start as an exit only', () => {
    const r = withBoot(record('b', 'running'));
    r.containers = { c: { status: 'created', boot: BOOT, binds: [], startedAt: '2026-12-07T10:00:01.000Z' } as never };
    const a = diffRecord('b', undefined, r, 'NOW');
    const restarted = withBoot(record('b', 'running'), BOOT2);
    restarted.containers = { c: { status: 'created', boot: BOOT2, binds: [] } };
    // stopped and started again between two reads: the state is the same, the containers are not.
    // Stopped and started again between two reads: the state is the same, the containers are not (the old boot's go first).
    expect(diffRecord('b', a.after, restarted, 'NOW').events.map(brief)).toEqual(['b/c deleted', 'b/c created']);
    const exitFirst = withBoot(record('x', 'running'));
    exitFirst.containers = { c: { status: 'created', boot: BOOT, binds: [], exit: { exitCode: 0, signal: 15, oomKilled: false, at: '2026-12-07T10:00:02.000Z' } } as never };
    const x = diffRecord('x', undefined, exitFirst, 'NOW');
    (exitFirst.containers['c'] as unknown as Record<string, unknown>)['startedAt'] = '2026-12-07T10:00:01.000Z';
    expect(x.events.map(brief)).toEqual(['x created', 'x running', 'x/c created', 'x/c exited 0']);
    // A start recorded after the exit was reported is not reported after it.
    expect(diffRecord('x', x.after, exitFirst, 'NOW').events).toEqual([]);
  });

  it('finds sandboxes when sandboxes/ did not exist yet, and replays with since', async () => {
    const { watcher, events } = watch({ rescanMs: 60_000 });
    await watcher.ready;
    await put(record('late', 'created')); // the root is watched until sandboxes/ exists
    await until('late created', () => events.map(brief).includes('late created'));

    // A replay: what the records show from `since` on.
    const old = record('old', 'stopped', {}, '2026-12-01T00:00:00.000Z');
    old.updatedAt = '2026-12-02T00:00:00.000Z';
    await put(old);
    const recent = withBoot(record('recent', 'running', {}, '2026-12-05T00:00:00.000Z'));
    recent.containers = { c: { status: 'created', boot: BOOT, binds: [], startedAt: '2026-12-05T00:00:02.000Z' } as never };
    await put(recent);
    const replay = watch({ since: '2026-12-03T00:00:00Z' });
    await replay.watcher.ready;
    const lines = replay.events.map(brief);
    expect(lines).toContain('recent created');
    expect(lines).toContain('recent running');
    expect(lines).toContain('recent/c started');
    expect(lines.filter((l) => l.startsWith('old '))).toEqual([]);
    // Without since: nothing about what exists already.
    const quiet = watch();
    await quiet.watcher.ready;
    expect(quiet.events).toEqual([]);
  });

  it('finds sandboxes under a state root made after it started (no inotify there: the periodic rescan)', async () => {
    const stateDir = path.join(root, 'made-later');
    const watcher = Sandbox.watch({ stateDir, rescanMs: 100 });
    watchers.push(watcher);
    const events: WatchEvent[] = [];
    watcher.on('event', (e) => events.push(e));
    await watcher.ready;
    const late = storeAt(stateDir);
    await fs.mkdir(late.dir('x'), { recursive: true });
    await late.write(record('x', 'created'));
    await until('x created', () => events.map(brief).includes('x created'));
    // Later changes are reported once, whether inotify or a rescan reads them first.
    await late.write(withBoot(record('x', 'running')));
    await until('x running', () => events.map(brief).includes('x running'));
    expect(events.map(brief)).toEqual(['x created', 'x running']);
  });

  it('is an async iterable that ends on abort; every iterator gets events from its start', async () => {
    const abort = new AbortController();
    const watcher = Sandbox.watch({ stateDir: root, signal: abort.signal, rescanMs: 60_000 });
    watchers.push(watcher);
    await watcher.ready;
    await put(record('it', 'created')); // before anyone iterates: kept for the first iterator
    const got: string[] = [];
    const loop = (async () => {
      for await (const event of watcher) {
        got.push(brief(event));
        if (event.type === 'sandbox' && event.action === 'stopped') abort.abort();
      }
    })();
    await until('it created', () => got.includes('it created'));
    const second = watcher[Symbol.asyncIterator]();
    await put(record('it', 'stopped'));
    await loop; // ended by the abort
    expect(got).toEqual(['it created', 'it stopped']);
    expect(watcher.closed).toBe(true);
    expect(await second.next()).toEqual({ value: { type: 'sandbox', action: 'stopped', sandbox: 'it', time: expect.any(String) }, done: false });
    expect(await second.next()).toEqual({ value: undefined, done: true });
    // Leaving the last loop early closes a watcher nobody listens to; one with a listener stays open.
    const once = Sandbox.watch({ stateDir: root, rescanMs: 60_000 });
    watchers.push(once);
    await once.ready;
    await put(record('it2', 'created'));
    for await (const event of once) if (event.type === 'sandbox') break;
    expect(once.closed).toBe(true);
    const heard = Sandbox.watch({ stateDir: root, rescanMs: 60_000 });
    watchers.push(heard);
    heard.on('error', () => undefined);
    await heard.ready;
    await put(record('it3', 'created'));
    for await (const event of heard) if (event.type === 'sandbox') break;
    expect(heard.closed).toBe(false);
    // An aborted signal: closed at once.
    const closed = Sandbox.watch({ stateDir: root, signal: AbortSignal.abort() });
    expect(closed.closed).toBe(true);
    expect(await closed[Symbol.asyncIterator]().next()).toEqual({ value: undefined, done: true });
  });

  it('checks its options', () => {
    expect(() => Sandbox.watch({ stateDir: 'relative' })).toThrow(InvalidArgumentError);
    expect(() => Sandbox.watch({ stateDir: root, rescanMs: 10 })).toThrow(InvalidArgumentError);
    expect(() => Sandbox.watch({ stateDir: root, since: 'yesterday-ish' })).toThrow(InvalidArgumentError);
    expect(parseSince(new Date(5))).toBe(5);
    expect(parseSince('1970-01-01T00:00:01Z')).toBe(1000);
  });
});

describe('waitExits', () => {
  it('waits for the started containers of a running sandbox through one attachment per boot, and lets go when it stops', async () => {
    const r = withBoot(record('wx', 'running'));
    r.containers = { a: { status: 'created', boot: BOOT, binds: [], startedAt: new Date().toISOString() } as never, b: { status: 'created', boot: BOOT, binds: [] } };
    await put(r);
    const journal = new Journal(store(), 'wx');
    const waits = new Map<string, (status: { exitCode: number; signal: number; oomKilled: boolean }) => void>();
    const attached: string[] = [];
    let detached = 0;
    const aborted: string[] = [];
    const target = {
      agent: async () => ({
        wait: (id: string, options: { signal?: AbortSignal }) =>
          new Promise((resolve, reject) => {
            let settled = false;
            waits.set(id, (status) => {
              settled = true;
              resolve(status);
            });
            options.signal?.addEventListener('abort', () => {
              if (settled) return;
              aborted.push(id);
              reject(new Error('aborted'));
            });
          }),
      }),
      containerExited: (id: string, status: { exitCode: number; signal: number; oomKilled: boolean }) => void recordContainerExit(journal, id, status),
      detach: () => void detached++,
    };
    const watcher = new SandboxWatcher({ stateDir: root, waitExits: true, rescanMs: 60_000 }, async (id) => {
      attached.push(id);
      return target as never;
    });
    watchers.push(watcher);
    const events: WatchEvent[] = [];
    watcher.on('event', (e) => events.push(e));
    await watcher.ready;
    // Only the started container is waited for.
    await until('the wait of a', () => waits.has('a'));
    expect([...waits.keys()]).toEqual(['a']);
    // b starts: waited for through the same attachment.
    (r.containers['b'] as unknown as Record<string, unknown>)['startedAt'] = new Date().toISOString();
    await put(r);
    await until('the wait of b', () => waits.has('b'));
    expect(attached).toEqual(['wx']);
    // a exits: the exit the watcher saw goes into the record, and comes back as an event.
    waits.get('a')!({ exitCode: 7, signal: 0, oomKilled: false });
    await until('a exited', () => events.some((e) => e.type === 'container' && e.action === 'exited'));
    expect(events.map(brief)).toEqual(['wx/b started', 'wx/a exited 7']);
    expect(containerLifecycle((await journal.read()).containers['a']).exit).toMatchObject({ exitCode: 7 });
    // The sandbox stops: the wait of b ends and the attachment is let go.
    await put(record('wx', 'stopped'));
    await until('the detach', () => detached === 1);
    expect(aborted).toEqual(['b']);
  });

  it('is refused without a way to attach', () => {
    expect(() => new SandboxWatcher({ stateDir: root, waitExits: true })).toThrow(InvalidArgumentError);
  });
});

describe('container start and exit in the record', () => {
  it('are written once, into the entry, and not for an entry that is gone', async () => {
    const r = withBoot(record('rec', 'running'));
    r.containers = { c: { status: 'created', boot: BOOT, binds: [] } };
    await put(r);
    const journal = new Journal(store(), 'rec');
    await recordContainerStarted(journal, 'c', new Date('2026-12-07T10:00:00Z'));
    await recordContainerStarted(journal, 'c', new Date('2026-12-07T10:00:09Z'));
    await recordContainerExit(journal, 'c', { exitCode: 137, signal: 9, oomKilled: true }, new Date('2026-12-07T10:00:05Z'));
    await recordContainerExit(journal, 'c', { exitCode: 0, signal: 0, oomKilled: false }, new Date('2026-12-07T10:00:06Z'));
    await recordContainerExit(journal, 'gone', { exitCode: 1, signal: 0, oomKilled: false });
    await recordContainerStarted(journal, 'gone');
    const after = await journal.read();
    expect(after.containers).toEqual({
      c: { status: 'created', boot: BOOT, binds: [], startedAt: '2026-12-07T10:00:00.000Z', exit: { exitCode: 137, signal: 9, oomKilled: true, at: '2026-12-07T10:00:05.000Z' } },
    });
  });
});
