/**
 * The share (src/sandbox/resources/share.ts) against a guest that changes whatever it can
 * write, in seconds and without a VM: the fast host-side counterpart of
 * sandbox/hostile-guest.test.ts. Every test runs twice: plain, and idmapped (`sharedFsUser`,
 * where virtiofsd, and so the guest's writes, are an unprivileged uid through idmapped binds).
 *
 * A {@link Share} is set up in a temporary folder and a volume-like folder, a file and a
 * read-only folder are bound into it as the sandbox binds them. Then the test plays the attacker
 * (guest root) through every path the guest could write:
 *
 * - the read-write binds, through the exported view `DIR/shared` (what virtiofsd does for the
 *   guest): symlinks to a canary outside, fifos, deep nesting, folders that look like share
 *   paths or lines of /proc/self/mountinfo, and attempts on the tree around them (all refused);
 * - the worst case, the read-write view `DIR/share` itself written by the attacker (the guest
 *   cannot, by design; the host must still not be turned against another path): the folder the
 *   host operates on next swapped for a symlink to the canary, a fifo, a file or a look-alike
 *   folder between two host steps (the attacker runs inside the record's `update`, which the
 *   share calls between its steps), bind points and tops renamed, the tree nested deep and
 *   filled up. The canary holds baits with the binds' names (folders, files, a mounted tmpfs),
 *   so that a host step redirected there would visibly make, remove or unmount something;
 * - a stale record naming another mount (one on the canary).
 *
 * After each attack the host goes on (a new bind, unbinds, tearDown). The checks: the canary
 * (outside the share) keeps every entry, content, mode, owner and time, its mounts (the baits)
 * stay and nothing else is mounted on it, nor is it bound into the share; each operation either
 * succeeds or rejects with a typed error (a VmpodError with an ERR_VMPOD_ code, or a
 * CleanupError made of such); an unbind that resolves leaves its bind unmounted; after tearDown
 * nothing is mounted under the temporary folder, and a tearDown that rejected is done by a second.
 *
 * Each check was seen to fail with a host step made path-based instead of fd-based (the point
 * made by path, the attach target opened by path, the point removed by path, the unmount by
 * path: each turns one test red on the canary), and on the code before 2f1f360, f783cce, 4105a7a.
 */
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CleanupError } from '../../src/cleanup.js';
import { InvalidArgumentError, SystemError, VmpodError } from '../../src/errors.js';
import { mount, unmount } from '../../src/devices/mount.js';
import { mountTable } from '../../src/host/tree.js';
import { Share, sharedDirOf, type ShareBind, type SharedFsState, type ShareTop } from '../../src/sandbox/resources/share.js';

const exec = promisify(execFile);
const root = process.getuid?.() === 0;

/** The temporary folder of one test: the sandbox folder, the canary and the sources are in it. */
let tmp: string;
/** The sandbox folder (the share's DIR). */
let dir: string;
/** Outside the share: what a host that followed the attacker's symlinks would change. */
let canary: string;
let canaryBefore: string[];
/** Mounts the test itself put on the canary (baits): `ID POINT`. */
let canaryMounts: string[];
let sources: { vol: string; vol2: string; file: string; ro: string };
let h: Harness;

/** A folder name that reads as a line of /proc/self/mountinfo (spaces, a newline, an escape). */
const LOOKS_LIKE_MOUNTINFO = 'x 99 1 0:1 \\ canary rw - tmpfs t rw\n100 1 0:2 \\040 volumes';

const under = (p: string, where: string): boolean => p === where || p.startsWith(`${where}/`);

/** Where a new bind is when the attacker strikes: recorded, its point not made yet; or its point made, nothing attached on it yet. */
type Phase = 'recorded' | 'point made';

/** The share with an in-memory record, and an attacker that acts between the host's steps. */
interface Harness {
  share: Share;
  state: SharedFsState;
  /** Runs `attack` once, right after the record update that puts a bind made from now on in `phase`. */
  between(phase: Phase, attack: (bind: ShareBind) => Promise<void>): void;
  /** Attacks scheduled with {@link between} that have not run (a test whose attack never ran proves nothing). */
  pending(): number;
}

function harness(at: string): Harness {
  const state: SharedFsState = { binds: {} };
  const attacks: Array<{ phase: Phase; known: Set<string>; attack: (bind: ShareBind) => Promise<void> }> = [];
  const inPhase = (b: ShareBind, phase: Phase): boolean => (phase === 'recorded' ? b.point === undefined : b.point !== undefined && b.mntId === undefined);
  const update = async <T,>(fn: (s: SharedFsState, save: () => Promise<void>) => T | Promise<T>): Promise<T> => {
    const result = await fn(state, async () => undefined);
    for (const a of [...attacks]) {
      const target = Object.entries(state.binds).find(([name, b]) => !a.known.has(name) && inPhase(b, a.phase));
      if (!target) continue;
      attacks.splice(attacks.indexOf(a), 1);
      await a.attack(target[1]);
    }
    return result;
  };
  return {
    share: new Share(at, update),
    state,
    between: (phase, attack) => void attacks.push({ phase, known: new Set(Object.keys(state.binds)), attack }),
    pending: () => attacks.length,
  };
}

/** Everything about a tree that a host step could change: entries, types, modes, owners, sizes, times, contents, link targets. */
async function snapshot(where: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    const p = path.join(where, rel);
    const st = await fs.lstat(p);
    let what = '';
    if (st.isSymbolicLink()) what = `-> ${await fs.readlink(p)}`;
    else if (st.isFile()) what = createHash('sha256').update(await fs.readFile(p)).digest('hex');
    out.push(`${rel || '.'} ino=${st.ino} mode=${st.mode.toString(8)} own=${st.uid}:${st.gid} size=${st.size} mtime=${st.mtimeMs} ctime=${st.ctimeMs} ${what}`);
    if (st.isDirectory()) for (const name of (await fs.readdir(p)).sort()) await walk(path.join(rel, name));
  };
  await walk('');
  return out;
}

/** (dev, ino) of every folder and file of the canary, to tell it apart if it is bound elsewhere. */
async function identities(where: string): Promise<Set<string>> {
  const ids = new Set<string>();
  const walk = async (p: string): Promise<void> => {
    const st = await fs.lstat(p);
    ids.add(`${st.dev}:${st.ino}`);
    if (st.isDirectory()) for (const name of await fs.readdir(p)) await walk(path.join(p, name));
  };
  await walk(where);
  return ids;
}

/** The canary is as it was: same entries, modes, owners, times, contents; its mounts (the test's baits) alone on it; not bound anywhere. */
async function expectCanaryUntouched(): Promise<void> {
  expect(await snapshot(canary)).toEqual(canaryBefore);
  const table = await mountTable();
  expect(table.filter((m) => under(m.mountPoint, canary)).map((m) => `${m.id} ${m.mountPoint}`)).toEqual(canaryMounts);
  // What is mounted in the share must not be the canary (bound there for the guest).
  const ids = await identities(canary);
  const exposed: string[] = [];
  for (const m of table.filter((x) => under(x.mountPoint, dir))) {
    const st = await fs.lstat(m.mountPoint).catch(() => undefined);
    if (st && ids.has(`${st.dev}:${st.ino}`)) exposed.push(m.mountPoint);
  }
  expect(exposed).toEqual([]);
}

/**
 * Puts in the canary, as the test (not the attacker), what a host step redirected there would act
 * on: folders and files with the names of binds, and mounts (a tmpfs) that a path-based unmount
 * would take. The canary's snapshot is taken again.
 */
async function bait(entries: Array<{ at: string; kind: 'dir' | 'file' | 'mount' }>): Promise<void> {
  for (const e of entries) {
    const where = path.join(canary, e.at);
    if (e.kind === 'file') {
      await fs.writeFile(where, 'canary');
      continue;
    }
    await fs.mkdir(where, { recursive: true });
    if (e.kind === 'mount') {
      await mount(where, { source: 'vt-canary', fstype: 'tmpfs', data: 'size=64k,mode=0755' });
      await fs.writeFile(path.join(where, 'keep'), 'canary');
    }
  }
  canaryBefore = await snapshot(canary);
  canaryMounts = (await mountTable()).filter((m) => under(m.mountPoint, canary)).map((m) => `${m.id} ${m.mountPoint}`);
}

/** Mount points under the temporary folder. */
async function mountsUnder(where: string): Promise<string[]> {
  return (await mountTable()).filter((m) => under(m.mountPoint, where)).map((m) => m.mountPoint);
}

/** How the promise settled: undefined when it resolved, else its error. */
async function outcome(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
    return undefined;
  } catch (error) {
    return error;
  }
}

/** A failure must be typed: a VmpodError with an ERR_VMPOD_ code, or a CleanupError whose failures all are. */
function expectTypedOrNone(error: unknown): void {
  if (error === undefined) return;
  if (error instanceof CleanupError) {
    expect(error.code).toBe('ERR_VMPOD_CLEANUP');
    expect(error.errors.length).toBeGreaterThan(0);
    for (const e of error.errors) expectTypedOrNone(e);
    return;
  }
  expect(error, String(error)).toBeInstanceOf(VmpodError);
  expect((error as VmpodError).code).toMatch(/^ERR_VMPOD_[A-Z_]+$/u);
}

/** The errno of a SystemError (or of the first failure of a CleanupError). */
function errnoOf(error: unknown): string | undefined {
  if (error instanceof CleanupError) return errnoOf(error.errors[0]);
  return error instanceof SystemError ? error.errnoName : undefined;
}

/** Mount ids of the binds the record knows. */
function recordedMounts(): Map<string, number> {
  return new Map(Object.entries(h.state.binds).flatMap(([name, b]) => (b.mntId === undefined ? [] : [[name, b.mntId] as [string, number]])));
}

/** Unbind; when it resolves, the bind's mount must be gone (wherever the attacker moved it). */
async function unbindChecked(name: string): Promise<unknown> {
  const mntId = h.state.binds[name]?.mntId;
  const error = await outcome(h.share.unbind(name));
  expectTypedOrNone(error);
  if (error === undefined && mntId !== undefined) {
    expect((await mountTable()).filter((m) => m.id === mntId).map((m) => m.mountPoint), `unbind ${name} resolved but its mount ${mntId} is still there`).toEqual([]);
  }
  return error;
}

/**
 * tearDown, then: a typed outcome, nothing mounted under the temporary folder, both views gone;
 * when it rejected (a bind the attacker made unreleasable), a second tearDown finds nothing left
 * to undo and resolves, with the record empty.
 */
async function tearDownChecked(): Promise<unknown> {
  const error = await outcome(h.share.tearDown());
  expectTypedOrNone(error);
  expect(await mountsUnder(dir)).toEqual([]);
  expect((await mountsUnder(tmp)).filter((m) => !under(m, canary))).toEqual([]);
  for (const view of ['share', 'shared']) await expect(fs.lstat(path.join(dir, view))).rejects.toMatchObject({ code: 'ENOENT' });
  if (error !== undefined) expect(await outcome(h.share.tearDown())).toBeUndefined();
  expect(h.state).toEqual({ binds: {} });
  return error;
}

/** Host view, exported view. */
const rwView = (): string => path.join(dir, 'share');
const roView = (): string => sharedDirOf(dir);

let moves = 0;
/** The attacker's move: `p` renamed aside and `replacement` made in its place. */
async function swap(p: string, replacement: 'symlink' | 'fifo' | 'dir' | 'file', target = canary): Promise<string> {
  const aside = `${p}.moved.${++moves}`;
  await fs.rename(p, aside);
  if (replacement === 'symlink') await fs.symlink(target, p);
  else if (replacement === 'fifo') await exec('mkfifo', [p]);
  else if (replacement === 'dir') await fs.mkdir(p);
  else await fs.writeFile(p, '');
  return aside;
}

async function bindVolume(top: ShareTop, source: string, readOnly = false): Promise<{ name: string; path: string }> {
  return h.share.bind({ top, prefix: path.basename(source).replace(/[^A-Za-z0-9_.-]/gu, '_'), source, readOnly });
}

async function unmountAllUnder(where: string): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    const inside = (await mountTable()).filter((m) => under(m.mountPoint, where));
    if (inside.length === 0) return;
    inside.sort((a, b) => b.mountPoint.length - a.mountPoint.length || b.id - a.id);
    await unmount(inside[0]!.mountPoint, { detach: true, noFollow: true });
  }
  throw new Error(`mounts keep coming back under ${where}`);
}

/**
 * The guest's moves through the exported view, as a shell script (arguments: a read-write
 * volume, a read-write file bind, a read-only volume, the view, the canary, three odd names).
 * Prints what it managed that it must not have.
 */
const ATTACKER = String.raw`
V=$1 F=$2 R=$3 S=$4 C=$5 ODD=$6 NAME=$7 ESC=$8
try() { if "$@" 2>/dev/null; then echo "allowed: $*"; fi; }
try mv "$V" "$V.x"
try rmdir "$V"
try mv "$F" "$F.x"
try rm -f "$F"
try ln -s "$C" "$S/volumes/evil"
try mkdir "$S/volumes/new"
try mv "$S/volumes" "$S/v2"
try ln -s "$C" "$S/rootfs/x"
try sh -c ': > "$1"' _ "$R/x"
set -e
ln -s "$C" "$V/escape"
ln -s / "$V/root"
ln -s ../../../../canary "$V/up"
mkfifo "$V/fifo"
mkdir -p "$V/$(printf 'd/%.0s' $(seq 1000))"
mkdir -p "$V/volumes/$NAME" "$V/rootfs/mounts" "$V/$ODD" "$V/$ESC"
printf '\000\033[2J\377' > "$V/bin"
chmod 777 "$V/precious"
printf 'guest wrote this' > "$F"
`;

/** The identity virtiofsd has with `sharedFsUser` in the idmapped variant. */
const BASE = 300000;
const IDMAP = { uid: BASE, gid: BASE, count: 65536 };
/** The variant under test: whether the share is idmapped. */
let idmapped = false;

/** Runs the guest's script as what virtiofsd would be: root, or uid BASE for an idmapped share; its stdout. */
async function guest(script: string, args: string[]): Promise<string> {
  const argv = ['-c', script, 'attacker', ...args];
  const { stdout } = idmapped ? await exec('setpriv', [`--reuid=${BASE}`, `--regid=${BASE}`, '--clear-groups', '--', 'sh', ...argv]) : await exec('sh', argv);
  return stdout;
}

describe.skipIf(!root).each([
  { variant: 'plain', idmap: undefined },
  { variant: 'idmapped (sharedFsUser)', idmap: IDMAP },
])('the share ($variant) against a guest that writes what it can reach (needs root)', ({ idmap }) => {
  beforeEach(async () => {
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'vt-sharedef-'));
    dir = path.join(tmp, 'sandbox');
    await fs.mkdir(dir, { mode: 0o700 });
    canary = path.join(tmp, 'canary');
    // Laid out like the share, so that a host step redirected here would make or remove something.
    for (const sub of ['rootfs', 'mounts', 'volumes', 'volumes/data.00000000']) await fs.mkdir(path.join(canary, sub), { recursive: true });
    await fs.writeFile(path.join(canary, 'keep'), 'canary');
    await fs.writeFile(path.join(canary, 'mounts', 'app.conf'), 'canary conf');
    await fs.chmod(path.join(canary, 'keep'), 0o640);
    canaryBefore = await snapshot(canary);
    canaryMounts = [];
    const src = path.join(tmp, 'src');
    sources = { vol: path.join(src, 'data'), vol2: path.join(src, 'more'), file: path.join(src, 'app.conf'), ro: path.join(src, 'ro') };
    for (const d of [sources.vol, sources.vol2, sources.ro]) await fs.mkdir(d, { recursive: true });
    await fs.writeFile(path.join(sources.vol, 'precious'), 'user data');
    await fs.writeFile(sources.file, 'conf');
    await fs.writeFile(path.join(sources.ro, 'readme'), 'ro');
    h = harness(dir);
    // Reachable by the unprivileged identity of an idmapped share (as the sandbox makes its folder).
    await fs.chmod(tmp, 0o711);
    await fs.chmod(dir, 0o711);
    idmapped = idmap !== undefined;
    await h.share.setUp(idmap);
  });

  afterEach(async () => {
    // Whatever a failed test left: unmounted first (never rm -r across a mount), then removed.
    await unmountAllUnder(tmp);
    await fs.rm(tmp, { recursive: true, force: true });
  });

  it('a guest writing through the read-write binds changes nothing outside them; binds, unbinds and tearDown go on safely', async () => {
    const vol = await bindVolume('volumes', sources.vol);
    const file = await h.share.bind({ top: 'mounts', prefix: 'c1-0', source: sources.file, readOnly: false });
    const ro = await bindVolume('volumes', sources.ro, true);
    const guestVol = path.join(roView(), vol.path);
    const guestFile = path.join(roView(), file.path);
    const guestRo = path.join(roView(), ro.path);
    expect(await fs.readFile(path.join(guestVol, 'precious'), 'utf8')).toBe('user data');
    // The variant is what it says: the view and the binds idmapped or not.
    const options = (await fs.readFile('/proc/self/mountinfo', 'utf8')).split('\n').map((l) => l.split(' ')).filter((f) => [roView(), guestVol, guestFile].includes(f[4]!));
    expect(options).toHaveLength(3);
    for (const f of options) expect(f[5]!.split(',').includes('idmapped')).toBe(idmapped);

    // The guest: root in the guest is what virtiofsd is on the host (root; with sharedFsUser an
    // unprivileged uid whose writes go through idmapped binds). What it must not manage: to
    // change the tree around its binds (read-only view, mount points). What it may: anything
    // inside a read-write bind.
    const out = await guest(ATTACKER, [guestVol, guestFile, guestRo, roView(), canary, LOOKS_LIKE_MOUNTINFO, vol.path.split('/')[1]!, 'sp\\040ace']);
    expect(out).toBe('');
    expect(await fs.readFile(sources.file, 'utf8')).toBe('guest wrote this');
    expect((await fs.lstat(path.join(sources.vol, 'escape'))).isSymbolicLink()).toBe(true);

    // The host goes on: a new volume, unbinds, tearDown.
    const vol2 = await bindVolume('volumes', sources.vol2);
    expect(await fs.readdir(path.join(roView(), vol2.path))).toEqual([]);
    expect(await unbindChecked(vol.name)).toBeUndefined();
    expect(await unbindChecked(file.name)).toBeUndefined();
    expect(await mountsUnder(path.join(roView(), vol.path))).toEqual([]);
    expect(await fs.readdir(path.join(rwView(), 'volumes'))).not.toContain(vol.path.split('/')[1]);
    await expectCanaryUntouched();
    expect(await tearDownChecked()).toBeUndefined();
    await expectCanaryUntouched();
    // The sources keep what the guest wrote in them (the host never walks them), and nothing else.
    expect((await fs.readdir(sources.vol)).sort()).toEqual(['bin', 'd', 'escape', 'fifo', 'precious', 'root', 'rootfs', 'sp\\040ace', 'up', 'volumes', LOOKS_LIKE_MOUNTINFO].sort());
  });

  it('a source below a read-write bind is refused: the guest could make it any host folder', async () => {
    const vol = await bindVolume('volumes', sources.vol);
    const guestVol = path.join(roView(), vol.path);
    // The guest makes sub a link to the canary; the host is asked to share DATA/sub (a container
    // bind of a volume's subfolder, say): following the link would export the canary to the guest.
    await guest('mkdir "$1/real" && ln -s "$2" "$1/sub"', [guestVol, canary]);
    for (const below of ['sub', 'real']) {
      const refused = await outcome(bindVolume('mounts', path.join(sources.vol, below), true));
      expect(refused, below).toBeInstanceOf(InvalidArgumentError);
      expect((refused as Error).message).toContain(`which is bound read-write into this sandbox`);
    }
    // Nothing was recorded or mounted for them; the canary is not in the share.
    expect(Object.values(h.state.binds).map((b) => b.source)).toEqual([sources.vol]);
    const table = await mountTable();
    expect(table.filter((m) => m.mountPoint.startsWith(`${roView()}/mounts/`))).toEqual([]);
    await expectCanaryUntouched();
    // The folder itself may be shared again, read-only, and is what it was.
    const again = await bindVolume('mounts', sources.vol, true);
    expect(await fs.readFile(path.join(roView(), again.path, 'precious'), 'utf8')).toBe('user data');
    expect(await tearDownChecked()).toBeUndefined();
    await expectCanaryUntouched();
  });

  it('worst case, the tree writable: a top folder swapped for a symlink to the canary', async () => {
    const before = await bindVolume('volumes', sources.vol);
    const file = await h.share.bind({ top: 'mounts', prefix: 'c0-0', source: sources.file, readOnly: false });
    // A bind whose attach the attacker made fail (its point swapped for a fifo): recorded with its point, nothing mounted.
    h.between('point made', async (bind) => void (await swap(path.join(rwView(), bind.path), 'fifo')));
    const half = await outcome(bindVolume('volumes', sources.vol2));
    expect(h.pending()).toBe(0);
    expect(errnoOf(half)).toBe('ENOTDIR');
    const halfName = Object.keys(h.state.binds).find((n) => h.state.binds[n]!.mntId === undefined)!;
    await bait([
      { at: before.path.split('/')[1]!, kind: 'dir' },
      { at: halfName, kind: 'dir' },
      { at: `mounts/${file.path.split('/')[1]!}`, kind: 'file' },
    ]);
    await swap(path.join(rwView(), 'volumes'), 'symlink');
    // The next bind goes into that folder: refused, nothing made or mounted in the canary.
    const refused = await outcome(bindVolume('volumes', sources.ro));
    await expectCanaryUntouched();
    expectTypedOrNone(refused);
    expect(errnoOf(refused)).toBe('ELOOP');
    // A file bind into a top swapped likewise.
    await swap(path.join(rwView(), 'mounts'), 'symlink', path.join(canary, 'mounts'));
    const refusedFile = await outcome(h.share.bind({ top: 'mounts', prefix: 'c1-0', source: sources.file, readOnly: false }));
    await expectCanaryUntouched();
    expect(errnoOf(refusedFile)).toBe('ELOOP');
    // The binds made before the swaps (mounted, or only their point) moved with their folders: unbinding them must not act on the canary.
    for (const name of [before.name, file.name, halfName]) await unbindChecked(name);
    for (const name of Object.keys(h.state.binds)) await unbindChecked(name);
    await expectCanaryUntouched();
    await tearDownChecked();
    await expectCanaryUntouched();
  });

  it('worst case: the point swapped for a symlink to the canary between its mkdir and the attach (folder and file)', async () => {
    for (const file of [false, true]) {
      h.between('point made', async (bind) => {
        await swap(path.join(rwView(), bind.path), 'symlink', file ? path.join(canary, 'mounts', 'app.conf') : path.join(canary, 'volumes', 'data.00000000'));
      });
      const refused = await outcome(file ? h.share.bind({ top: 'mounts', prefix: 'c1-0', source: sources.file, readOnly: false }) : bindVolume('volumes', sources.vol));
      expect(h.pending()).toBe(0);
      await expectCanaryUntouched();
      expectTypedOrNone(refused);
      expect(errnoOf(refused)).toBe('ELOOP');
    }
    for (const name of Object.keys(h.state.binds)) await unbindChecked(name);
    await expectCanaryUntouched();
    await tearDownChecked();
    await expectCanaryUntouched();
  });

  it('worst case: the point swapped for a fifo, a file or a look-alike folder before the attach', async () => {
    const cases: Array<{ file: boolean; replacement: 'fifo' | 'dir' | 'file' }> = [
      { file: true, replacement: 'fifo' },
      { file: false, replacement: 'fifo' },
      { file: false, replacement: 'file' },
      { file: false, replacement: 'dir' },
      { file: true, replacement: 'dir' },
    ];
    for (const c of cases) {
      h.between('point made', async (bind) => {
        await swap(path.join(rwView(), bind.path), c.replacement);
      });
      const result = await outcome(c.file ? h.share.bind({ top: 'mounts', prefix: 'c1-0', source: sources.file, readOnly: false }) : bindVolume('volumes', sources.vol));
      expect(h.pending()).toBe(0);
      expectTypedOrNone(result);
      await expectCanaryUntouched();
    }
    for (const name of Object.keys(h.state.binds)) await unbindChecked(name);
    await expectCanaryUntouched();
    await tearDownChecked();
    await expectCanaryUntouched();
  });

  it('worst case: the name taken before the host makes the point (symlink to the canary, folder)', async () => {
    for (const replacement of ['symlink', 'dir'] as const) {
      h.between('recorded', async (bind) => {
        const p = path.join(rwView(), bind.path);
        if (replacement === 'symlink') await fs.symlink(path.join(canary, 'volumes'), p);
        else await fs.mkdir(p);
      });
      const refused = await outcome(bindVolume('volumes', sources.vol));
      expect(h.pending()).toBe(0);
      expectTypedOrNone(refused);
      expect(errnoOf(refused)).toBe('EEXIST');
    }
    for (const name of Object.keys(h.state.binds)) await unbindChecked(name);
    await expectCanaryUntouched();
    await tearDownChecked();
    await expectCanaryUntouched();
  });

  it('worst case: bind points and tops renamed after the attach, look-alike folders put in their place', async () => {
    const vol = await bindVolume('volumes', sources.vol);
    const vol2 = await bindVolume('volumes', sources.vol2);
    const file = await h.share.bind({ top: 'mounts', prefix: 'c1-0', source: sources.file, readOnly: false });
    // A mounted point cannot be renamed or removed, in either view.
    for (const view of [rwView(), roView()]) {
      expect(((await outcome(fs.rename(path.join(view, vol.path), path.join(view, 'volumes', 'x')))) as NodeJS.ErrnoException).code).toMatch(/^(EBUSY|EROFS)$/u);
      expect(((await outcome(fs.rmdir(path.join(view, vol.path)))) as NodeJS.ErrnoException).code).toMatch(/^(EBUSY|EROFS)$/u);
    }
    // Its folder can: the binds move with it, and look-alikes take their names.
    await bait([
      { at: file.path, kind: 'file' },
      { at: vol2.path, kind: 'mount' },
    ]);
    await swap(path.join(rwView(), 'volumes'), 'dir');
    await fs.mkdir(path.join(rwView(), vol.path));
    await fs.symlink(path.join(canary, vol2.path), path.join(rwView(), vol2.path));
    await swap(path.join(rwView(), 'mounts'), 'symlink', path.join(canary, 'mounts'));
    const recorded = recordedMounts();
    // The host goes on: new binds land in the new folder; unbinds do not act on the look-alikes or the canary.
    const vol3 = await bindVolume('volumes', sources.ro, true);
    expect(await fs.readdir(path.join(roView(), vol3.path))).toEqual(['readme']);
    for (const name of [vol.name, vol2.name, file.name, vol3.name]) await unbindChecked(name);
    await expectCanaryUntouched();
    await tearDownChecked();
    for (const id of recorded.values()) expect((await mountTable()).some((m) => m.id === id)).toBe(false);
    await expectCanaryUntouched();
  });

  it('worst case: the tree nested deep and filled up: binds refused with a typed error, tearDown still complete', async () => {
    const vol = await bindVolume('volumes', sources.vol);
    await fs.mkdir(path.join(rwView(), 'volumes', ...Array<string>(1000).fill('d')), { recursive: true });
    await fs.symlink('loop', path.join(rwView(), 'volumes', 'loop'));
    // Fill the tree's inodes (its tmpfs is small: the guest could never fill host memory through it).
    let made = 0;
    let full: unknown;
    const flat = path.join(rwView(), 'rootfs');
    for (; made < 20_000; made++) {
      full = await outcome(fs.mkdir(path.join(flat, `f${made}`)));
      if (full) break;
    }
    expect((full as NodeJS.ErrnoException | undefined)?.code).toBe('ENOSPC');
    const refused = await outcome(bindVolume('rootfs', sources.vol2));
    expectTypedOrNone(refused);
    expect(errnoOf(refused)).toBe('ENOSPC');
    await expectCanaryUntouched();
    expect(await unbindChecked(vol.name)).toBeUndefined();
    for (const name of Object.keys(h.state.binds)) await unbindChecked(name);
    await tearDownChecked();
    await expectCanaryUntouched();
  });

  it('a stale record naming another mount (on the canary) does not make the host unmount it', async () => {
    const vol = await bindVolume('volumes', sources.vol);
    await mount(path.join(canary, 'rootfs'), { source: 'vt-canary', fstype: 'tmpfs', data: 'size=64k' });
    try {
      const canaryMount = (await mountTable()).find((m) => m.mountPoint === path.join(canary, 'rootfs'))!;
      const realId = h.state.binds[vol.name]!.mntId!;
      h.state.binds[vol.name]!.mntId = canaryMount.id;
      expectTypedOrNone(await outcome(h.share.unbind(vol.name)));
      expect((await mountTable()).some((m) => m.id === canaryMount.id && m.mountPoint === canaryMount.mountPoint)).toBe(true);
      // The bind itself was found on the share's view by where it sits.
      expect((await mountTable()).some((m) => m.id === realId)).toBe(false);
    } finally {
      await unmount(path.join(canary, 'rootfs'), { detach: true, noFollow: true });
    }
    await tearDownChecked();
    await expectCanaryUntouched();
  });
});
