#!/usr/bin/env node
// The pack-install-run test (docs/install.md, docs/testing.md "The package as users get it"): vmpod
// as a user gets it. Run as root from the repository, after the native and TypeScript builds
// (.ci/run runs it after npm test):
//
//   1. npm pack (prepack checks and records the binaries, prepare builds dist/); the tarball's
//      size and contents (docs, LICENSE, the set-up script, maps whose sources are in it).
//   2. A new project in a temporary folder, and `npm install` of the tarball with no build tool
//      on PATH (no cmake, g++, cc, make...: checked first); the install must keep the shipped
//      binaries (the install step says so, build/ holds Release only, the files are the packed
//      ones). The install time is printed.
//   3. A TypeScript script importing `vmpod` and `vmpod/guest` type-checks against the installed
//      typings (this repository's typescript, skipLibCheck off) and runs: a sandbox with the
//      built-in defaults, a container whose output and exit code are checked (its kernel is the
//      guest's), then the sandbox is deleted. Then the installed `vmpod run --rm` (the README's
//      command). Guest assets: the default cache
//      (/var/cache/vmpod/guest, what `vmpod run` uses), built there once when missing or made
//      with another agent.
//   4. Nothing is left: no sandbox in its state directory, no process or mount of its folder.
//
// Every program is spawned with an argument array; the environment's vmpod overrides
// (VMPOD_ADDON, VMPOD_AGENT, ... as the coverage run sets them) are removed.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const BUILD_TOOLS = ['cmake', 'g++', 'gcc', 'cc', 'c++', 'make', 'ninja', 'pkg-config', 'clang', 'clang++'];
const BINARIES = ['vmpod.node', 'vmpod-agent', 'vmpod-logger'];
const started = Date.now();
const failures = [];

function say(message) {
  process.stdout.write(`pack-install: ${message}\n`);
}

function check(ok, message) {
  if (ok) say(`ok: ${message}`);
  else {
    failures.push(message);
    say(`FAILED: ${message}`);
  }
  return ok;
}

function baseEnv() {
  const env = { ...process.env };
  for (const name of Object.keys(env)) if (name.startsWith('VMPOD_')) delete env[name];
  for (const name of ['CC', 'CXX']) delete env[name];
  return env;
}

function run(command, args, options = {}) {
  const t0 = Date.now();
  const result = spawnSync(command, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...options });
  const seconds = (Date.now() - t0) / 1000;
  const output = `${result.stdout ?? ''}${result.stderr ?? ''}`;
  if (result.error) throw new Error(`${command} ${args.join(' ')}: ${result.error.message}`);
  return { status: result.status, signal: result.signal, stdout: result.stdout ?? '', stderr: result.stderr ?? '', output, seconds };
}

function must(result, what) {
  if (result.status !== 0) {
    process.stdout.write(result.output);
    throw new Error(`${what} failed (exit status ${result.status}${result.signal ? `, ${result.signal}` : ''})`);
  }
  return result;
}

function sha256(file) {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

function onPath(name, pathValue) {
  return pathValue.split(':').filter(Boolean).map((dir) => path.join(dir, name)).find((file) => {
    try {
      fs.accessSync(file, fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/** Processes whose command line names `dir`, and mounts under it. */
function leftovers(dir) {
  const found = [];
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/u.test(p) && Number(p) !== process.pid)) {
    let cmdline = '';
    try {
      cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
    } catch {
      continue;
    }
    if (cmdline.includes(dir)) found.push(`process ${pid}: ${cmdline.slice(0, 160)}`);
  }
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const point = line.split(' ')[4];
    if (point !== undefined && (point === dir || point.startsWith(`${dir}/`))) found.push(`mount ${point}`);
  }
  return found;
}

async function waitForNothingLeft(dir) {
  let left = [];
  for (let attempt = 0; attempt < 50; attempt++) {
    left = leftovers(dir);
    if (left.length === 0) return left;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return left;
}

/** The consumer's script: what a user writes from README and the typings. */
const CONSUMER = `import { Sandbox, type ExitStatus } from 'vmpod';
import { resolveGuestAssets } from 'vmpod/guest';

const progress: string[] = [];
let result: { stdout: string; stderr: string; status: ExitStatus; guestKernel: string; sandbox: string };
{
  await using sandbox = await Sandbox.create();          // the built-in defaults
  sandbox.on('progress', (message) => progress.push(message));
  await sandbox.start();
  const container = await sandbox.createContainer({
    process: { args: ['sh', '-c', 'echo "hello from $(uname -r)"; echo "to stderr" >&2; exit 7'] },
  });
  let stdout = '';
  let stderr = '';
  container.stdout!.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  container.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  await container.start();
  const status = await container.wait();
  const assets = await resolveGuestAssets();
  result = { stdout, stderr, status, guestKernel: assets.manifest?.kernelRelease ?? '', sandbox: sandbox.id };
}
console.log(JSON.stringify({ ...result, progress }));
`;

async function main() {
  if (process.getuid?.() !== 0) throw new Error('run as root: the consumer boots a VM');
  for (const name of BINARIES) {
    if (!fs.existsSync(path.join(repo, 'build', 'Release', name))) throw new Error(`build/Release/${name} is missing: run npm ci first`);
  }
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-pk-'));
  say(`working in ${work}`);
  let ok = false;
  try {
    await steps(work);
    ok = failures.length === 0;
  } finally {
    if (ok) fs.rmSync(work, { recursive: true, force: true });
    else say(`kept ${work} for a look`);
  }
}

async function steps(work) {
  const env = baseEnv();

  // 1. The tarball.
  const packed = must(run('npm', ['pack', '--json', '--pack-destination', work], { cwd: repo, env }), 'npm pack');
  // The scripts' output comes first; npm's JSON ends stdout.
  const info = JSON.parse(packed.stdout.slice(packed.stdout.lastIndexOf('[\n  {')))[0];
  const tarball = path.join(work, info.filename);
  say(`tarball ${info.filename}: ${(info.size / 1e6).toFixed(2)} MB packed, ${(info.unpackedSize / 1e6).toFixed(2)} MB unpacked, ${info.entryCount} files (npm pack ${packed.seconds.toFixed(1)} s)`);
  const files = new Set(info.files.map((f) => f.path));
  const modes = new Map(info.files.map((f) => [f.path, f.mode]));
  for (const needed of ['LICENSE', 'README.md', 'package.json', 'docs/install.md', 'docs/sandbox.md', 'scripts/setup-host.sh', 'scripts/native-binaries.mjs',
    'build/Release/vmpod.node', 'build/Release/vmpod-agent', 'build/Release/vmpod-logger', 'build/Release/vmpod-native.json',
    'dist/index.js', 'dist/index.d.ts', 'dist/exports/network.d.ts', 'src/index.ts', 'native/agent/main.cc', 'CMakeLists.txt']) {
    check(files.has(needed), `the tarball has ${needed}`);
  }
  check(((modes.get('scripts/setup-host.sh') ?? 0) & 0o111) !== 0, 'scripts/setup-host.sh is executable in the tarball');
  const unwanted = [...files].filter((f) => /^(test|benchmarks|coverage|native\/fuzz|docs\/api|\.ci)\//u.test(f) || f.startsWith('build/') && !f.startsWith('build/Release/'));
  check(unwanted.length === 0, `the tarball has no tests, fuzzers, coverage, API pages or build folders${unwanted.length ? `: ${unwanted.slice(0, 5).join(', ')}` : ''}`);

  // 2. A fresh project, and the install with no build tool on PATH.
  const bin = path.join(work, 'bin');
  fs.mkdirSync(bin);
  for (const tool of ['node', 'npm', 'sh']) {
    const real = onPath(tool, env.PATH ?? '');
    if (!real) throw new Error(`${tool} is not on PATH`);
    fs.symlinkSync(fs.realpathSync(real), path.join(bin, tool));
  }
  const bare = { ...env, PATH: bin };
  const reachable = BUILD_TOOLS.filter((tool) => onPath(tool, bare.PATH));
  check(reachable.length === 0, `no build tool on the install's PATH (${BUILD_TOOLS.join(', ')})${reachable.length ? `: found ${reachable.join(', ')}` : ''}`);
  // The same, as a shell sees it (npm runs the install step through sh).
  const shell = run(path.join(bin, 'sh'), ['-c', `for t in ${BUILD_TOOLS.join(' ')}; do command -v "$t"; done; exit 0`], { env: bare });
  check(shell.stdout.trim() === '', `sh -c 'command -v ...' finds none of them${shell.stdout.trim() ? `: ${shell.stdout.trim()}` : ''}`);

  const consumer = path.join(work, 'consumer');
  fs.mkdirSync(consumer);
  fs.writeFileSync(path.join(consumer, 'package.json'), `${JSON.stringify({ name: 'vmpod-consumer', private: true, type: 'module' }, null, 2)}\n`);
  const install = must(run(path.join(bin, 'npm'), ['install', '--no-audit', '--no-fund', '--foreground-scripts', tarball], { cwd: consumer, env: bare }), 'npm install of the tarball');
  say(`npm install of the tarball: ${install.seconds.toFixed(1)} s`);
  const installed = path.join(consumer, 'node_modules', 'vmpod');
  check(/vmpod: using the shipped native binaries/u.test(install.output), 'the install step kept the shipped binaries (it says so)');
  check(!/building the native code/u.test(install.output), 'the install step did not build');
  check(JSON.stringify(fs.readdirSync(path.join(installed, 'build'))) === '["Release"]', 'build/ of the installed package holds Release only (no cmake build tree)');
  for (const name of BINARIES) {
    check(sha256(path.join(installed, 'build', 'Release', name)) === sha256(path.join(repo, 'build', 'Release', name)), `build/Release/${name} is the packed file`);
  }
  const version = run(path.join(consumer, 'node_modules', '.bin', 'vmpod'), ['--version'], { env });
  check(version.status === 0 && /^vmpod \d/u.test(version.stdout), `the vmpod bin runs (${version.stdout.trim()})`);
  const setup = path.join(consumer, 'node_modules', '.bin', 'vmpod-setup-host');
  check(fs.existsSync(setup) && (fs.statSync(setup).mode & 0o111) !== 0, 'the vmpod-setup-host bin is installed and executable');

  // Source maps: every source they name is in the package.
  const unresolved = [];
  let maps = 0;
  for (const rel of fs.readdirSync(path.join(installed, 'dist'), { recursive: true, encoding: 'utf8' })) {
    if (!rel.endsWith('.map')) continue;
    maps++;
    const file = path.join(installed, 'dist', rel);
    const map = JSON.parse(fs.readFileSync(file, 'utf8'));
    for (const source of map.sources) {
      const target = path.resolve(path.dirname(file), map.sourceRoot ?? '', source);
      if (!target.startsWith(`${installed}/`) || !fs.existsSync(target)) unresolved.push(`${rel}: ${source}`);
    }
  }
  check(maps > 0 && unresolved.length === 0, `the ${maps} source maps resolve in the package${unresolved.length ? `: ${unresolved.slice(0, 5).join(', ')}` : ''}`);

  // The links of README.md and docs/ (and examples/README.md) to files of the package resolve in it.
  const dead = [];
  const pages = ['README.md', ...fs.readdirSync(path.join(installed, 'docs')).map((f) => `docs/${f}`), 'examples/README.md'];
  for (const page of pages.filter((p) => p.endsWith('.md') && fs.existsSync(path.join(installed, p)))) {
    const text = fs.readFileSync(path.join(installed, page), 'utf8').replace(/```[\s\S]*?```/gu, '');
    for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/gu)) {
      if (/^[a-z]+:/u.test(target) || target.startsWith('#')) continue;
      const file = path.resolve(path.dirname(path.join(installed, page)), target.replace(/#.*$/u, ''));
      if (!file.startsWith(`${installed}/`) || !fs.existsSync(file)) dead.push(`${page}: ${target}`);
    }
  }
  check(dead.length === 0, `the links of README.md and docs/ resolve in the package${dead.length ? `: ${dead.slice(0, 8).join(', ')}` : ''}`);

  // 3. The consumer's script: type-checked against the installed typings, then run.
  fs.writeFileSync(path.join(consumer, 'main.ts'), CONSUMER);
  const tsconfig = {
    compilerOptions: {
      target: 'ES2022', lib: ['ES2023', 'ESNext.Disposable'], module: 'nodenext', moduleResolution: 'nodenext', strict: true,
      skipLibCheck: false, types: ['node'], typeRoots: [path.join(repo, 'node_modules', '@types')], outDir: 'out',
    },
    files: ['main.ts'],
  };
  fs.writeFileSync(path.join(consumer, 'tsconfig.json'), `${JSON.stringify(tsconfig, null, 2)}\n`);
  const tsc = run(process.execPath, [path.join(repo, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', path.join(consumer, 'tsconfig.json')], { cwd: consumer, env });
  if (!check(tsc.status === 0, 'the script type-checks against the installed typings (skipLibCheck off)')) {
    process.stdout.write(tsc.output);
    return;
  }
  const stateDir = path.join(work, 's'); // short: the sandbox's unix sockets live under it
  const runEnv = { ...env, VMPOD_STATE_DIR: stateDir };
  const consumerRun = run(process.execPath, [path.join(consumer, 'out', 'main.js')], { cwd: consumer, env: runEnv, timeout: 600_000 });
  say(`the script ran in ${consumerRun.seconds.toFixed(1)} s`);
  if (!check(consumerRun.status === 0, 'the script exits 0')) process.stdout.write(consumerRun.output);
  else {
    const out = JSON.parse(consumerRun.stdout.trim().split('\n').at(-1));
    say(`guest: ${out.progress.some((m) => /building the guest assets/u.test(m)) ? 'built in the default cache by this run' : 'found in the default cache'} (kernel ${out.guestKernel})`);
    check(out.guestKernel !== '' && out.guestKernel !== os.release(), `the guest kernel is not the host's (${out.guestKernel}, host ${os.release()})`);
    check(out.stdout === `hello from ${out.guestKernel}\n`, `the container's stdout is its kernel's greeting (${JSON.stringify(out.stdout)})`);
    check(out.stderr === 'to stderr\n', `the container's stderr came apart (${JSON.stringify(out.stderr)})`);
    check(out.status.exitCode === 7 && out.status.signal === 0, `its exit status is 7 (${JSON.stringify(out.status)})`);
    // The README's command, from the installed bin: the guest kernel answers, the exit code passes through.
    const cli = run(path.join(consumer, 'node_modules', '.bin', 'vmpod'), ['run', '--rm', '--', 'sh', '-c', 'uname -r; exit 3'], { cwd: consumer, env: runEnv, timeout: 600_000 });
    say(`vmpod run --rm ran in ${cli.seconds.toFixed(1)} s`);
    check(cli.status === 3 && cli.stdout === `${out.guestKernel}\n`, `the installed vmpod run --rm prints the guest's kernel and exits with the command's code (${cli.status}, ${JSON.stringify(cli.stdout)})`);
    if (cli.status !== 3) process.stdout.write(cli.output);
  }

  // 4. Nothing left.
  const sandboxes = path.join(stateDir, 'sandboxes');
  const records = fs.existsSync(sandboxes) ? fs.readdirSync(sandboxes) : [];
  check(records.length === 0, `no sandbox left in its state directory${records.length ? `: ${records.join(', ')}` : ''}`);
  const left = await waitForNothingLeft(work);
  check(left.length === 0, `no process or mount of its folder left${left.length ? `:\n  ${left.join('\n  ')}` : ''}`);
}

try {
  await main();
} catch (error) {
  failures.push(error instanceof Error ? error.message : String(error));
  say(`FAILED: ${failures.at(-1)}`);
}
say(`${failures.length === 0 ? 'passed' : `${failures.length} failed`} in ${((Date.now() - started) / 1000).toFixed(0)} s`);
process.exitCode = failures.length === 0 ? 0 : 1;
