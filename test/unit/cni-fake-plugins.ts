/**
 * Fake CNI plugins for tests: small Node scripts written into a temp directory. Each records
 * every call (plugin, CNI_* environment, parsed stdin, pid) into `calls.jsonl` next to it, then
 * runs its behaviour. They need no root and touch nothing but their own directory.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import os from 'node:os';

export interface FakeCall {
  plugin: string;
  command: string;
  env: Record<string, string>;
  stdin: Record<string, unknown>;
  pid: number;
}

/**
 * Behaviour bodies run with: `cmd` (CNI_COMMAND), `conf` (parsed stdin), `env`, `out(obj)`
 * (print JSON and exit 0), `fail(code, msg, details)` (print a CNI error and exit 1), and `log(x)`
 * (append a note to calls.jsonl).
 */
export const behaviours = {
  /** An interface plugin: ADD returns a fixed 1.x (or the config's version) result with an interface. */
  iface: `
    if (cmd === 'ADD') out({ cniVersion: conf.cniVersion, interfaces: [
        { name: 'br0' }, { name: 'veth0', mac: '02:00:00:00:00:aa' },
        { name: env.CNI_IFNAME, mac: '02:00:00:00:00:01', sandbox: env.CNI_NETNS }],
      ips: [{ address: '10.9.0.2/24', gateway: '10.9.0.1', interface: 2 }],
      routes: [{ dst: '0.0.0.0/0' }], dns: { nameservers: ['10.9.0.1'] } });
    process.exit(0);`,
  /** A chained plugin: ADD passes prevResult through, changing the container interface's MAC. */
  chain: `
    if (cmd === 'ADD') {
      const r = conf.prevResult;
      const i = r.interfaces.findIndex((x) => x.sandbox);
      r.interfaces[i].mac = (conf.runtimeConfig && conf.runtimeConfig.mac) || '02:00:00:00:00:02';
      out(r);
    }
    process.exit(0);`,
  /** An old-style plugin answering in 0.4.0 format. */
  legacy: `
    if (cmd === 'ADD') out({ cniVersion: '0.4.0',
      interfaces: [{ name: env.CNI_IFNAME, mac: '02:00:00:00:00:04', sandbox: env.CNI_NETNS }],
      ips: [{ version: '4', address: '10.4.0.2/24', gateway: '10.4.0.1', interface: 0 },
            { version: '6', address: 'fd00:4::2/64', interface: 0 }],
      routes: [{ dst: '0.0.0.0/0', gw: '10.4.0.1' }], dns: {} });
    process.exit(0);`,
  /** Fails ADD with a CNI error result; DEL succeeds. */
  error: `
    if (cmd === 'ADD') fail(107, 'cannot frobnicate', 'the frobnicator is out of order');
    process.exit(0);`,
  /** ADD forks a child and both hang; DEL succeeds. */
  hang: `
    if (cmd === 'ADD') {
      const child = require('child_process').spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
      log({ hangPids: [process.pid, child.pid] });
      setInterval(() => {}, 1000);
      return;
    }
    process.exit(0);`,
  /** ADD prints something that is not JSON, with status 0. */
  garbage: `
    if (cmd === 'ADD') { process.stdout.write('this is not { json'); process.exit(0); }
    process.exit(0);`,
  /** ADD writes to stderr and dies without a CNI error result. */
  crash: `
    if (cmd === 'ADD') { process.stderr.write('panic: runtime error: index out of range'); process.exit(2); }
    process.exit(0);`,
  /** ADD prints output without end. */
  flood: `
    if (cmd === 'ADD') {
      const chunk = Buffer.alloc(65536, 'x');
      const pump = () => { while (process.stdout.write(chunk)) {} process.stdout.once('drain', pump); };
      pump();
      return;
    }
    process.exit(0);`,
  /** Answers VERSION with 0.3.0-1.0.0 only. */
  upTo100: `
    if (cmd === 'VERSION') out({ cniVersion: conf.cniVersion, supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0'] });
    if (cmd === 'ADD') out({ cniVersion: conf.cniVersion, interfaces: [{ name: env.CNI_IFNAME, sandbox: env.CNI_NETNS }], ips: [] });
    process.exit(0);`,
  /** Knows no VERSION command (a pre-0.2 plugin). */
  ancient: `
    if (cmd === 'VERSION') fail(4, 'unknown CNI_COMMAND: VERSION');
    process.exit(0);`,
  /** CNI 1.1 plugin: STATUS fails with 50 when conf.down is set; GC succeeds. */
  modern: `
    if (cmd === 'VERSION') out({ cniVersion: conf.cniVersion, supportedVersions: ['1.0.0', '1.1.0'] });
    if (cmd === 'STATUS' && conf.down) fail(50, 'plugin not available', 'daemon is down');
    if (cmd === 'ADD') out({ cniVersion: conf.cniVersion, interfaces: [{ name: env.CNI_IFNAME, mtu: 1400, sandbox: env.CNI_NETNS }], ips: [] });
    process.exit(0);`,
} as const;

const PRELUDE = (log: string, name: string): string => `#!${process.execPath}
'use strict';
const fs = require('fs');
const LOG = ${JSON.stringify(log)};
const cmd = process.env.CNI_COMMAND;
const env = process.env;
const raw = fs.readFileSync(0, 'utf8');
let conf = null; try { conf = JSON.parse(raw); } catch { conf = { unparsed: raw }; }
const log = (x) => fs.appendFileSync(LOG, JSON.stringify(x) + '\\n');
log({ plugin: ${JSON.stringify(name)}, command: cmd, env: { ...process.env }, stdin: conf, pid: process.pid });
const out = (o) => { process.stdout.write(JSON.stringify(o)); process.exit(0); };
const fail = (code, msg, details) => { process.stdout.write(JSON.stringify({ cniVersion: (conf && conf.cniVersion) || '1.0.0', code, msg, details })); process.exit(1); };
`;

/** A directory of fake plugins plus the log of their calls. */
export class FakePlugins {
  private constructor(readonly dir: string) {}

  static async create(): Promise<FakePlugins> {
    return new FakePlugins(await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-cni-fake-')));
  }

  get logFile(): string {
    return path.join(this.dir, 'calls.jsonl');
  }

  /** Writes plugin `name` with a behaviour body into `dir` (default: this directory). */
  async write(name: string, body: string, dir = this.dir): Promise<string> {
    await fs.mkdir(dir, { recursive: true });
    const file = path.join(dir, name);
    await fs.writeFile(file, `${PRELUDE(this.logFile, name)}(() => {${body}\n})();\n`, { mode: 0o755 });
    return file;
  }

  /** Every recorded call, in order. Notes written with `log()` are returned as-is. */
  async calls(): Promise<FakeCall[]> {
    const text = await fs.readFile(this.logFile, 'utf8').catch(() => '');
    return text.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as FakeCall);
  }

  /** Only the plugin calls (no notes), as `plugin:COMMAND`. */
  async sequence(): Promise<string[]> {
    return (await this.calls()).filter((c) => c.plugin !== undefined).map((c) => `${c.plugin}:${c.command}`);
  }

  async clearLog(): Promise<void> {
    await fs.rm(this.logFile, { force: true });
  }

  async remove(): Promise<void> {
    await fs.rm(this.dir, { recursive: true, force: true });
  }
}
