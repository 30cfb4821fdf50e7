#!/usr/bin/env node
// vmpod's native binaries (the addon build/Release/vmpod.node, the guest agent vmpod-agent and
// the log writer vmpod-logger) at install time and at pack time. See docs/install.md.
//
//   node scripts/native-binaries.mjs install
//       package.json "install". Keeps the binaries in build/Release when they were built from the
//       native sources of this very package (build/Release/vmpod-native.json, written at pack
//       time), for this platform, and when each one loads or runs here: the addon is loaded in a
//       child Node process and must report the ABI of native/addon/common.h, the agent must
//       answer --version, the log writer must copy a line into a file. Otherwise (a git checkout,
//       a changed source, another libc...) it builds them with cmake-js; when the build tools are
//       not there it fails naming them and the Debian packages that have them.
//       `npm install --build-from-source` (npm_config_build_from_source) always builds.
//   node scripts/native-binaries.mjs pack
//       package.json "prepack": builds (cmake-js, incremental), checks the binaries as above and
//       writes build/Release/vmpod-native.json; removes files of dist/ whose source is gone (so
//       that every source map in the tarball resolves).
//
// No shell: every program is spawned with an argument array.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const self = fileURLToPath(import.meta.url);
const root = path.resolve(path.dirname(self), '..');
const release = path.join(root, 'build', 'Release');
const manifestFile = path.join(release, 'vmpod-native.json');
const MANIFEST_FORMAT = 1;
const BINARIES = ['vmpod.node', 'vmpod-agent', 'vmpod-logger'];
/** Left out of the package and of the sources hash: the fuzzers are not part of a build. */
const UNPACKED_SOURCES = ['native/fuzz'];
/** The environment of the probes: the overrides of the library must not point them elsewhere. */
const OVERRIDES = ['VMPOD_ADDON', 'VMPOD_AGENT', 'VMPOD_LOGGER', 'VMPOD_NATIVE_COVERAGE'];

function log(message) {
  process.stdout.write(`vmpod: ${message}\n`);
}

function probeEnv() {
  const env = { ...process.env };
  for (const name of OVERRIDES) delete env[name];
  return env;
}

// --- The sources the binaries are built from ------------------------------------------------

function sourceFiles() {
  const files = ['CMakeLists.txt'];
  const walk = (rel) => {
    for (const entry of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const child = `${rel}/${entry.name}`;
      if (UNPACKED_SOURCES.includes(child)) continue;
      if (entry.isDirectory()) walk(child);
      else if (entry.isFile()) files.push(child);
    }
  };
  walk('native');
  return files.sort();
}

/** One SHA-256 over the names and contents of CMakeLists.txt and native/ (without the fuzzers). */
export function sourcesHash() {
  const hash = createHash('sha256');
  for (const rel of sourceFiles()) {
    const content = createHash('sha256').update(fs.readFileSync(path.join(root, rel))).digest('hex');
    hash.update(`${rel}\0${content}\n`);
  }
  return hash.digest('hex');
}

function fileHash(file) {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

// --- Probes: does each binary load or run on this machine? ----------------------------------

function abiOfSources() {
  const header = fs.readFileSync(path.join(root, 'native', 'addon', 'common.h'), 'utf8');
  const match = /constexpr int kAbiVersion = (\d+);/u.exec(header);
  if (!match) throw new Error('native/addon/common.h has no kAbiVersion');
  return Number(match[1]);
}

function describe(result) {
  if (result.error) return result.error.message;
  const stderr = (result.stderr ?? '').toString().trim().split('\n').slice(-3).join(' / ');
  const how = result.signal ? `killed by ${result.signal}` : `exit status ${result.status}`;
  return stderr ? `${how}: ${stderr}` : how;
}

function probeAddon(file) {
  // A child process: a library that does not resolve, or an addon that crashes while loading,
  // must not take this script down.
  const result = spawnSync(process.execPath, [self, 'probe-addon', file], { env: probeEnv(), encoding: 'utf8', timeout: 60_000 });
  if (result.status !== 0) return `build/Release/vmpod.node does not load here (${describe(result)})`;
  const abi = Number(result.stdout.trim());
  const wanted = abiOfSources();
  return abi === wanted ? undefined : `build/Release/vmpod.node has ABI ${abi}, the sources ${wanted}`;
}

function probeAgent(file) {
  const result = spawnSync(file, ['--version'], { env: probeEnv(), encoding: 'utf8', timeout: 60_000 });
  if (result.status !== 0) return `build/Release/vmpod-agent does not run here (${describe(result)})`;
  return /^vmpod-agent \S+/u.test(result.stdout) ? undefined : `build/Release/vmpod-agent --version printed ${JSON.stringify(result.stdout.slice(0, 80))}`;
}

function probeLogger(file) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-install-'));
  try {
    const out = path.join(dir, 'probe.log');
    const line = 'vmpod install probe\n';
    const result = spawnSync(file, [out, '4096'], { env: probeEnv(), input: line, encoding: 'utf8', timeout: 60_000 });
    if (result.status !== 0) return `build/Release/vmpod-logger does not run here (${describe(result)})`;
    const written = fs.existsSync(out) ? fs.readFileSync(out, 'utf8') : '';
    return written === line ? undefined : `build/Release/vmpod-logger wrote ${JSON.stringify(written.slice(0, 80))}, not the probe line`;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Why the binaries in build/Release cannot be used as they are (empty: they can). */
function probeBinaries() {
  const reasons = [];
  for (const name of BINARIES) {
    if (!fs.existsSync(path.join(release, name))) reasons.push(`build/Release/${name} is missing`);
  }
  if (reasons.length > 0) return reasons;
  const checks = [
    ['vmpod.node', probeAddon],
    ['vmpod-agent', probeAgent],
    ['vmpod-logger', probeLogger],
  ];
  for (const [name, check] of checks) {
    const reason = check(path.join(release, name));
    if (reason) reasons.push(reason);
  }
  return reasons;
}

/** Why the shipped binaries cannot be used (empty: they can). */
export function shippedBinariesProblems() {
  let manifest;
  try {
    manifest = JSON.parse(fs.readFileSync(manifestFile, 'utf8'));
  } catch {
    return ['no build/Release/vmpod-native.json: these are not the binaries of a packed vmpod (a git checkout builds its own)'];
  }
  if (manifest?.format !== MANIFEST_FORMAT) return [`build/Release/vmpod-native.json has format ${manifest?.format}, not ${MANIFEST_FORMAT}`];
  if (manifest.platform !== process.platform || manifest.arch !== process.arch) {
    return [`the binaries are for ${manifest.platform}-${manifest.arch}, this is ${process.platform}-${process.arch}`];
  }
  if (manifest.sources !== sourcesHash()) return ['the binaries were built from other native sources than the ones here'];
  const changed = BINARIES.filter((name) => {
    const file = path.join(release, name);
    return !fs.existsSync(file) || manifest.files?.[name] !== fileHash(file);
  });
  if (changed.length > 0) return [`${changed.map((n) => `build/Release/${n}`).join(', ')} differ from what was packed`];
  return probeBinaries();
}

// --- Building --------------------------------------------------------------------------------

function onPath(name) {
  for (const dir of (process.env['PATH'] ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const file = path.join(dir, name);
    try {
      fs.accessSync(file, fs.constants.X_OK);
      if (fs.statSync(file).isFile()) return file;
    } catch {
      // not there
    }
  }
  return undefined;
}

/** A program named by $CC/$CXX (a name or a path), or the first of `names` on PATH. */
function compiler(variable, names) {
  const chosen = process.env[variable];
  if (chosen) return path.isAbsolute(chosen) ? (fs.existsSync(chosen) ? chosen : undefined) : onPath(chosen);
  for (const name of names) {
    const found = onPath(name);
    if (found) return found;
  }
  return undefined;
}

function cmakeVersion(cmake) {
  const result = spawnSync(cmake, ['--version'], { encoding: 'utf8', timeout: 30_000 });
  const match = /cmake version (\d+)\.(\d+)/u.exec(result.stdout ?? '');
  return match ? [Number(match[1]), Number(match[2])] : undefined;
}

/** A library file the compiler finds (`-print-file-name`), for the static agent. */
function compilerFinds(cc, file) {
  const result = spawnSync(cc, [`-print-file-name=${file}`], { encoding: 'utf8', timeout: 30_000 });
  const found = (result.stdout ?? '').trim();
  return path.isAbsolute(found) && fs.existsSync(found);
}

/** What the build needs and is not there: [what, Debian package]. */
export function missingBuildTools() {
  const missing = [];
  const cmake = onPath('cmake');
  if (!cmake) missing.push(['cmake (3.18 or later)', 'cmake']);
  else {
    const version = cmakeVersion(cmake);
    if (!version || version[0] < 3 || (version[0] === 3 && version[1] < 18)) missing.push([`cmake 3.18 or later (${cmake} is ${version ? version.join('.') : 'unknown'})`, 'cmake']);
  }
  const cc = compiler('CC', ['cc', 'gcc']);
  const cxx = compiler('CXX', ['c++', 'g++']);
  if (!cc) missing.push(['a C compiler (cc, gcc)', 'gcc']);
  if (!cxx) missing.push(['a C++ compiler (c++, g++)', 'g++']);
  if (!onPath('make') && !onPath('ninja')) missing.push(['make (or ninja)', 'make']);
  if (cc && !compilerFinds(cc, 'libc.a')) missing.push(['the static C library libc.a (the guest agent is a static binary)', 'libc6-dev']);
  if (cxx && !compilerFinds(cxx, 'libstdc++.a')) missing.push(['the static C++ library libstdc++.a', 'libstdc++-12-dev']);
  const pkgConfig = onPath('pkg-config');
  if (!pkgConfig) missing.push(['pkg-config', 'pkg-config']);
  if (!pkgConfig || spawnSync(pkgConfig, ['--exists', 'libmnl'], { timeout: 30_000 }).status !== 0) missing.push(['libmnl (its headers and pkg-config file)', 'libmnl-dev']);
  const includeDirs = ['/usr/include', '/usr/local/include'];
  if (!includeDirs.some((dir) => fs.existsSync(path.join(dir, 'nlohmann', 'json.hpp')))) missing.push(['nlohmann/json.hpp', 'nlohmann-json3-dev']);
  return missing;
}

function cmakeJs() {
  const require = createRequire(path.join(root, 'package.json'));
  const pkgFile = require.resolve('cmake-js/package.json');
  const pkg = JSON.parse(fs.readFileSync(pkgFile, 'utf8'));
  const bin = typeof pkg.bin === 'string' ? pkg.bin : pkg.bin?.['cmake-js'];
  if (!bin) throw new Error(`${pkgFile} names no cmake-js bin`);
  return path.resolve(path.dirname(pkgFile), bin);
}

/** cmake-js compile (Release), output passed through; throws on failure. */
function build() {
  const result = spawnSync(process.execPath, [cmakeJs(), 'compile', '--CDCMAKE_BUILD_TYPE=Release'], { cwd: root, stdio: 'inherit' });
  if (result.status !== 0) throw new Error(`cmake-js compile failed (${describe(result)})`);
}

function installHelp(missing) {
  const packages = ['build-essential', 'cmake', 'pkg-config', 'libmnl-dev', 'nlohmann-json3-dev'];
  return [
    `the native code cannot be built here: missing ${missing.map(([what, deb]) => `${what} [Debian package ${deb}]`).join(', ')}.`,
    `On Debian 12: apt-get install ${packages.join(' ')}`,
    `(or: ${path.join(root, 'scripts', 'setup-host.sh')}, which installs everything vmpod uses), then install vmpod again.`,
  ].join('\n');
}

function buildFromSourceRequested() {
  const value = process.env['npm_config_build_from_source'];
  return value !== undefined && value !== '' && value !== 'false';
}

function install() {
  const reasons = buildFromSourceRequested() ? ['--build-from-source'] : shippedBinariesProblems();
  if (reasons.length === 0) {
    log(`using the shipped native binaries (${BINARIES.join(', ')}): built from these sources for ${process.platform}-${process.arch}, and they load and run here`);
    return 0;
  }
  log(`building the native code: ${reasons.join('; ')}`);
  const missing = missingBuildTools();
  if (missing.length > 0) {
    process.stderr.write(`vmpod: ${installHelp(missing)}\n`);
    return 1;
  }
  build();
  const after = probeBinaries();
  if (after.length > 0) {
    process.stderr.write(`vmpod: the native code was built, but: ${after.join('; ')}\n`);
    return 1;
  }
  log('built the native binaries in build/Release');
  return 0;
}

/** dist/ files (js, d.ts and their maps) whose src/ file is gone: left by an older build. */
function removeOrphans() {
  const dist = path.join(root, 'dist');
  if (!fs.existsSync(dist)) return;
  const walk = (dir) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const file = path.join(dir, entry.name);
      if (entry.isDirectory()) {
        walk(file);
        continue;
      }
      const base = /^(.*)\.(?:js|d\.ts)(?:\.map)?$/u.exec(path.relative(dist, file))?.[1];
      if (base !== undefined && !fs.existsSync(path.join(root, 'src', `${base}.ts`))) {
        fs.rmSync(file);
        log(`removed ${path.relative(root, file)}: its source is gone`);
      }
    }
  };
  walk(dist);
}

function pack() {
  build();
  const problems = probeBinaries();
  if (problems.length > 0) throw new Error(`not packing binaries that do not work: ${problems.join('; ')}`);
  const files = Object.fromEntries(BINARIES.map((name) => [name, fileHash(path.join(release, name))]));
  const manifest = { format: MANIFEST_FORMAT, platform: process.platform, arch: process.arch, sources: sourcesHash(), files };
  fs.writeFileSync(manifestFile, `${JSON.stringify(manifest, null, 2)}\n`);
  log(`wrote ${path.relative(root, manifestFile)}`);
  removeOrphans();
  return 0;
}

function main(argv) {
  const [command, arg] = argv;
  if (command === 'install') return install();
  if (command === 'pack') return pack();
  if (command === 'probe-addon' && arg) {
    const addon = createRequire(self)(arg);
    process.stdout.write(`${addon.abiVersion}\n`);
    return 0;
  }
  process.stderr.write('usage: native-binaries.mjs install | pack\n');
  return 2;
}

if (process.argv[1] && fs.realpathSync(process.argv[1]) === fs.realpathSync(self)) {
  try {
    process.exitCode = main(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`vmpod: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exitCode = 1;
  }
}
