/**
 * scripts/native-binaries.mjs, the package's install and prepack step (docs/install.md), run as
 * a program against a copy of the package in a temporary folder: the real native sources and
 * binaries of build/Release, and a stand-in cmake-js in its node_modules that records each call
 * and "builds" by copying the real binaries (so no test here compiles anything).
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

const repo = path.resolve('.');
const BINARIES = ['vmpod.node', 'vmpod-agent', 'vmpod-logger'];
const built = BINARIES.every((name) => fs.existsSync(path.join(repo, 'build', 'Release', name)));

/** The stand-in cmake-js: appends its arguments to calls.jsonl, copies the binaries from STUB_BINARIES. */
const STUB = `#!/usr/bin/env node
const fs = require('node:fs');
const path = require('node:path');
const root = path.resolve(__dirname, '..', '..', '..');
fs.appendFileSync(path.join(root, 'calls.jsonl'), JSON.stringify({ args: process.argv.slice(2), cwd: process.cwd() }) + '\\n');
const out = path.join(process.cwd(), 'build', 'Release');
fs.mkdirSync(out, { recursive: true });
for (const name of ${JSON.stringify(BINARIES)}) fs.copyFileSync(path.join(process.env.STUB_BINARIES, name), path.join(out, name));
`;

let root: string;
let emptyPath: string;

beforeEach(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-native-install-'));
  fs.mkdirSync(path.join(root, 'scripts'));
  fs.copyFileSync(path.join(repo, 'scripts', 'native-binaries.mjs'), path.join(root, 'scripts', 'native-binaries.mjs'));
  fs.copyFileSync(path.join(repo, 'CMakeLists.txt'), path.join(root, 'CMakeLists.txt'));
  fs.cpSync(path.join(repo, 'native'), path.join(root, 'native'), { recursive: true });
  fs.writeFileSync(path.join(root, 'package.json'), JSON.stringify({ name: 'vmpod', version: '0.0.0', type: 'module' }));
  const stub = path.join(root, 'node_modules', 'cmake-js');
  fs.mkdirSync(path.join(stub, 'bin'), { recursive: true });
  fs.writeFileSync(path.join(stub, 'package.json'), JSON.stringify({ name: 'cmake-js', version: '0.0.0', bin: { 'cmake-js': './bin/cmake-js' } }));
  fs.writeFileSync(path.join(stub, 'bin', 'cmake-js'), STUB, { mode: 0o755 });
  fs.mkdirSync(path.join(root, 'real'));
  for (const name of BINARIES) fs.copyFileSync(path.join(repo, 'build', 'Release', name), path.join(root, 'real', name));
  emptyPath = path.join(root, 'empty-bin');
  fs.mkdirSync(emptyPath);
});

afterEach(() => {
  fs.rmSync(root, { recursive: true, force: true });
});

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function run(command: 'install' | 'pack', env: Record<string, string | undefined> = {}): Run {
  const merged: NodeJS.ProcessEnv = { ...process.env, STUB_BINARIES: path.join(root, 'real') };
  delete merged['npm_config_build_from_source'];
  for (const [key, value] of Object.entries(env)) {
    if (value === undefined) delete merged[key];
    else merged[key] = value;
  }
  const result = spawnSync(process.execPath, [path.join(root, 'scripts', 'native-binaries.mjs'), command], { cwd: root, env: merged, encoding: 'utf8' });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

function calls(): { args: string[]; cwd: string }[] {
  const file = path.join(root, 'calls.jsonl');
  if (!fs.existsSync(file)) return [];
  return fs.readFileSync(file, 'utf8').trim().split('\n').map((line) => JSON.parse(line) as { args: string[]; cwd: string });
}

function sha256(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

function release(name: string): string {
  return path.join(root, 'build', 'Release', name);
}

/** Packs (the stand-in build), then forgets that call. */
function packed(): void {
  const result = run('pack');
  expect(result.status, result.stderr).toBe(0);
  fs.rmSync(path.join(root, 'calls.jsonl'));
}

function manifest(): { files: Record<string, string>; sources: string } {
  return JSON.parse(fs.readFileSync(release('vmpod-native.json'), 'utf8')) as { files: Record<string, string>; sources: string };
}

/** Replaces a packed binary and records the new file in the manifest, as a pack made elsewhere would. */
function replacePacked(name: string, content: string | Buffer): void {
  fs.rmSync(release(name));
  fs.writeFileSync(release(name), content, { mode: 0o755 });
  const m = manifest();
  m.files[name] = sha256(release(name));
  fs.writeFileSync(release('vmpod-native.json'), JSON.stringify(m));
}

describe.skipIf(!built)('the install step (scripts/native-binaries.mjs install)', () => {
  it('pack builds once with cmake-js (Release) and records the sources and binaries', () => {
    const result = run('pack');
    expect(result.status, result.stderr).toBe(0);
    expect(calls()).toEqual([{ args: ['compile', '--CDCMAKE_BUILD_TYPE=Release'], cwd: root }]);
    const m = manifest();
    expect(m).toMatchObject({ format: 1, platform: process.platform, arch: process.arch });
    expect(m.sources).toMatch(/^[0-9a-f]{64}$/u);
    expect(Object.keys(m.files).sort()).toEqual([...BINARIES].sort());
  });

  it('keeps the packed binaries when they load and run here, with no build tool on PATH', () => {
    packed();
    const before = BINARIES.map((name) => sha256(release(name)));
    const result = run('install', { PATH: emptyPath });
    expect(result.status, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/using the shipped native binaries/u);
    expect(calls()).toEqual([]);
    expect(BINARIES.map((name) => sha256(release(name)))).toEqual(before);
    expect(fs.readdirSync(path.join(root, 'build'))).toEqual(['Release']);
  });

  it('builds in a git checkout (no manifest), and says why', () => {
    const result = run('install');
    expect(result.status, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/building the native code: no build\/Release\/vmpod-native\.json/u);
    expect(result.stdout).toMatch(/built the native binaries/u);
    expect(calls()).toHaveLength(1);
  });

  it('builds when a native source changed since the pack', () => {
    packed();
    fs.appendFileSync(path.join(root, 'native', 'agent', 'main.cc'), '\n// changed\n');
    const result = run('install');
    expect(result.status, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/built from other native sources/u);
    expect(calls()).toEqual([{ args: ['compile', '--CDCMAKE_BUILD_TYPE=Release'], cwd: root }]);
  });

  it('does not count the fuzzers (not packed) as sources', () => {
    packed();
    fs.rmSync(path.join(root, 'native', 'fuzz'), { recursive: true, force: true });
    const result = run('install', { PATH: emptyPath });
    expect(result.status, result.stderr).toBe(0);
    expect(calls()).toEqual([]);
  });

  it('builds when asked to (npm install --build-from-source)', () => {
    packed();
    const result = run('install', { npm_config_build_from_source: 'true' });
    expect(result.status, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/building the native code: --build-from-source/u);
    expect(calls()).toHaveLength(1);
  });

  it('builds when a packed binary was changed after the pack', () => {
    packed();
    fs.appendFileSync(release('vmpod-logger'), 'x');
    const result = run('install');
    expect(result.status, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/build\/Release\/vmpod-logger differ from what was packed/u);
    expect(calls()).toHaveLength(1);
  });

  it('builds for another platform or architecture', () => {
    packed();
    const m = { ...manifest(), arch: process.arch === 'x64' ? 'arm64' : 'x64' };
    fs.writeFileSync(release('vmpod-native.json'), JSON.stringify(m));
    const result = run('install');
    expect(result.status, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/the binaries are for linux-/u);
    expect(calls()).toHaveLength(1);
  });

  it('probes each binary: an addon that does not load, an agent that does not run, a log writer that writes nothing', () => {
    packed();
    replacePacked('vmpod.node', 'not an ELF file');
    replacePacked('vmpod-agent', '#!/bin/sh\nexit 3\n');
    replacePacked('vmpod-logger', '#!/bin/sh\nwhile read -r line; do :; done\n');
    const result = run('install', { PATH: emptyPath });
    expect(result.status).toBe(1);
    expect(result.stdout).toMatch(/build\/Release\/vmpod\.node does not load here/u);
    expect(result.stdout).toMatch(/build\/Release\/vmpod-agent does not run here \(exit status 3\)/u);
    expect(result.stdout).toMatch(/build\/Release\/vmpod-logger wrote ""/u);
    expect(calls()).toEqual([]);
  });

  it('fails without build tools, naming each missing one and its Debian package', () => {
    packed();
    fs.appendFileSync(path.join(root, 'native', 'logger', 'logger.cc'), '\n// changed\n');
    const result = run('install', { PATH: emptyPath, CC: undefined, CXX: undefined });
    expect(result.status).toBe(1);
    expect(calls()).toEqual([]);
    for (const needed of [/cmake \(3\.18 or later\) \[Debian package cmake\]/u, /a C\+\+ compiler \(c\+\+, g\+\+\) \[Debian package g\+\+\]/u,
      /a C compiler \(cc, gcc\) \[Debian package gcc\]/u, /make \(or ninja\) \[Debian package make\]/u, /pkg-config \[Debian package pkg-config\]/u,
      /libmnl .*\[Debian package libmnl-dev\]/u]) {
      expect(result.stderr).toMatch(needed);
    }
    expect(result.stderr).toMatch(/apt-get install build-essential cmake pkg-config libmnl-dev nlohmann-json3-dev/u);
  });

  it('names only what is missing: the tools on PATH, a library pkg-config does not know', () => {
    packed();
    fs.appendFileSync(path.join(root, 'native', 'logger', 'logger.cc'), '\n// changed\n');
    // pkg-config that knows no libmnl: everything else is the host's.
    const bin = path.join(root, 'pkg-bin');
    fs.mkdirSync(bin);
    fs.writeFileSync(path.join(bin, 'pkg-config'), '#!/bin/sh\nexit 1\n', { mode: 0o755 });
    const result = run('install', { PATH: `${bin}:${process.env['PATH'] ?? ''}` });
    expect(result.status).toBe(1);
    expect(result.stderr).toMatch(/missing libmnl \(its headers and pkg-config file\) \[Debian package libmnl-dev\]\./u);
    expect(calls()).toEqual([]);
  });

  it('pack refuses binaries whose addon ABI is not the one of the sources', () => {
    const header = path.join(root, 'native', 'addon', 'common.h');
    fs.writeFileSync(header, fs.readFileSync(header, 'utf8').replace(/kAbiVersion = (\d+);/u, (_, n: string) => `kAbiVersion = ${Number(n) + 1};`));
    const result = run('pack');
    expect(result.status).toBe(1);
    expect(result.stderr).toMatch(/not packing binaries that do not work: build\/Release\/vmpod\.node has ABI \d+, the sources \d+/u);
    expect(fs.existsSync(release('vmpod-native.json'))).toBe(false);
  });

  it('pack removes dist files whose source is gone (their maps would not resolve)', () => {
    fs.mkdirSync(path.join(root, 'src', 'kept'), { recursive: true });
    fs.writeFileSync(path.join(root, 'src', 'kept', 'a.ts'), 'export {};\n');
    fs.mkdirSync(path.join(root, 'dist', 'kept'), { recursive: true });
    const kept = ['kept/a.js', 'kept/a.js.map', 'kept/a.d.ts', 'kept/a.d.ts.map'];
    const gone = ['gone.js', 'gone.js.map', 'gone.d.ts', 'gone.d.ts.map'];
    for (const name of [...kept, ...gone]) fs.writeFileSync(path.join(root, 'dist', name), '');
    const result = run('pack');
    expect(result.status, result.stderr).toBe(0);
    for (const name of kept) expect(fs.existsSync(path.join(root, 'dist', name)), name).toBe(true);
    for (const name of gone) expect(fs.existsSync(path.join(root, 'dist', name)), name).toBe(false);
  });
});
