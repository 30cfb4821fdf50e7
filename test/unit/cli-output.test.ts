/**
 * What the CLI prints of text that comes from a guest (container ids and statuses from its
 * agent, its console log, error messages quoting a console tail) is made safe for a terminal.
 * Tested on the functions the commands print with, since the real data needs a running VM.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { EXIT_FAILURE, EXIT_USAGE, UsageError, formatError, formatTable, reportError } from '../../src/cli/io.js';
import { formatSandboxes, type PsRow } from '../../src/cli/commands/ps.js';
import { copyLog } from '../../src/cli/commands/logs.js';
import { formatCheckOutcomes, formatInterfaces } from '../../src/cli/commands/network.js';
import { VmpodError } from '../../src/errors.js';
import { PrintableDecoder } from '../../src/printable.js';
import type { ContainerInfo } from '../../src/agent/messages.js';
import type { SandboxInterfaceInfo } from '../../src/sandbox/resources/network.js';

const ESC = '\x1b';
/** What a hostile guest puts in a string: clear screen, title, clipboard write, C1 CSI, bidi override, newline. */
const HOSTILE = `${ESC}[2J${ESC}]0;pwned\x07${ESC}]52;c;ZXZpbA==\x07\u009b1A\u202efdp\nfake\r`;

/** True when `text` holds a character a terminal acts on (other than newline), or a bidi control. */
function hasControls(text: string): boolean {
  return /[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/u.test(text);
}

function container(id: string, status = 'running'): ContainerInfo {
  return { id, status, pid: 1, bundle: '/b', rootfs: 'builtin', createdAt: 0, terminal: false, exit: null, execs: [] } as unknown as ContainerInfo;
}

function sandbox(containers: ContainerInfo[]): PsRow {
  return {
    id: 'web',
    state: 'running',
    createdAt: '2026-11-28T08:01:12.000Z',
    pid: 41234,
    cpus: 1,
    memoryMiB: 256,
    machine: 'q35',
    consoleLog: '/run/vmpod/web/console.log',
    containers,
  };
}

describe('vmpod ps', () => {
  it("escapes the container ids and statuses the guest's agent reports, one line per sandbox", () => {
    const out = formatSandboxes([sandbox([container(HOSTILE, `running${ESC}[8m`), container('db')]), sandbox([])]);
    expect(hasControls(out)).toBe(false);
    const lines = out.split('\n');
    expect(lines).toHaveLength(4); // header, two sandboxes, and the empty string after the last newline
    expect(lines[1]).toContain('\\x1b[2J\\x1b]0;pwned\\x07\\x1b]52;c;ZXZpbA==\\x07\\u009b1A\\u202efdp\\nfake\\r(running\\x1b[8m) db(running)');
    expect(lines[2]).toMatch(/^web +running +41234 +1 +256M +2026-11-28 08:01:12 +-$/u);
  });

  it('leaves ordinary ids as they are', () => {
    expect(formatSandboxes([sandbox([container('web')])])).toBe(
      'SANDBOX   STATE     PID     CPUS   MEMORY   CREATED               CONTAINERS\n' +
        'web       running   41234   1      256M     2026-11-28 08:01:12   web(running)\n',
    );
  });
});

describe('tables', () => {
  it('escape every cell on one line and align on the escaped text', () => {
    expect(formatTable(['A', 'B'], [[`x${ESC}y`, 'z'], ['a\tb', '中文']])).toBe('A        B\nx\\x1by   z\na\\tb     中文\n');
  });

  it('of vmpod network ls escape names and addresses too', () => {
    const info = {
      name: `eth0${ESC}[2J`,
      kind: 'veth',
      model: 'tcfilter',
      origin: 'cni',
      network: 'net\u202e1',
      mac: '02:00:00:00:00:01',
      mtu: 1500,
      queues: 1,
      deviceId: 'net0',
      plugged: true,
      addresses: ['10.0.0.2/24', `fd00::2/64\n${ESC}]0;x\x07`],
      routes: [],
      hostLinks: [],
    } as unknown as SandboxInterfaceInfo;
    const out = formatInterfaces([info]);
    expect(hasControls(out)).toBe(false);
    expect(out.split('\n')).toHaveLength(3);
    expect(out).toContain('eth0\\x1b[2J');
    expect(out).toContain('cni:net\\u202e1');
  });

  it('of vmpod network check keep one line per network whatever the error says', () => {
    const out = formatCheckOutcomes([
      { network: 'n1', ifName: 'eth0', status: 'failed', error: new Error(`plugin said:\n${ESC}[2Jgone`) },
      { network: 'n2', ifName: 'eth1', status: 'skipped', reason: 'not plugged' },
      { network: 'n3', ifName: 'eth2', status: 'ok' },
    ]);
    expect(out).toBe('eth0 (n1): failed: plugin said:\\n\\x1b[2Jgone\neth1 (n2): skipped: not plugged\neth2 (n3): ok\n');
  });
});

describe('error messages', () => {
  // What the library's errors carry: a console tail from the guest, in the message or a cause.
  const tail = `[    1.2] agent: panic\r\n${ESC}[2J${ESC}]0;owned\x07\u009b2J\u202eevil\r\n`;
  const error = new VmpodError('ERR_VMPOD_HYPERVISOR', `the VM exited during boot; console:\n${tail}`, {
    cause: new Error(`qemu: ${ESC}[1A${ESC}[2Kfine\b\b\b\b`),
  });

  it('are printed with every control escaped, newlines kept, CR LF as LF', () => {
    const out = formatError(error, false);
    expect(hasControls(out)).toBe(false);
    expect(out).toBe(
      'vmpod: the VM exited during boot; console:\n' +
        '[    1.2] agent: panic\n' +
        '\\x1b[2J\\x1b]0;owned\\x07\\u009b2J\\u202eevil\n' +
        '\n' +
        '  caused by: qemu: \\x1b[1A\\x1b[2Kfine\\x08\\x08\\x08\\x08\n',
    );
  });

  it('as JSON are escaped too and parse back to the same message', () => {
    const out = formatError(error, true);
    expect(hasControls(out.replace(/\n$/u, ''))).toBe(false);
    expect(out.endsWith('\n')).toBe(true);
    expect(JSON.parse(out)).toEqual({ error: { code: 'ERR_VMPOD_HYPERVISOR', message: error.message } });
  });

  it('are written to stderr by reportError, which gives the exit code', () => {
    const writes: string[] = [];
    const write = process.stderr.write;
    process.stderr.write = ((chunk: string) => writes.push(chunk) > 0) as typeof process.stderr.write;
    try {
      expect(reportError(error, false)).toBe(EXIT_FAILURE);
      expect(reportError(new UsageError(`--memory "${ESC}[2J": bad`), false)).toBe(EXIT_USAGE);
      expect(reportError(new Error('unknown option'), false, true)).toBe(EXIT_USAGE);
    } finally {
      process.stderr.write = write;
    }
    expect(writes).toHaveLength(3);
    for (const text of writes) expect(hasControls(text)).toBe(false);
    expect(writes[1]).toBe('vmpod: --memory "\\x1b[2J": bad\n');
  });
});

describe('vmpod logs', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-cli-logs-'));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const log = Buffer.concat([
    Buffer.from(`[    0.000000] Linux version 6.1.0\r\n${ESC}[2J${ESC}]52;c;ZXZpbA==\x07中文 😀\r\nprogress 10%\rprogress 99%\r\n`),
    Buffer.from([0xff, 0xfe]), // not UTF-8
    Buffer.from('\r\nend\r\n'),
  ]);
  const file = path.join(dir, 'console.log');
  fs.writeFileSync(file, log);

  async function copied(decoder: PrintableDecoder, offset = 0): Promise<{ out: Buffer; offset: number }> {
    const out = new PassThrough();
    const chunks: Buffer[] = [];
    out.on('data', (c: Buffer | string) => chunks.push(Buffer.from(c)));
    const end = await copyLog(file, offset, out, decoder);
    const rest = decoder.end();
    if (rest) chunks.push(Buffer.from(rest));
    return { out: Buffer.concat(chunks), offset: end };
  }

  it('always makes it printable (a terminal, a pipe, a file): controls escaped, CR LF as LF, invalid UTF-8 as U+FFFD', async () => {
    const { out, offset } = await copied(new PrintableDecoder());
    expect(offset).toBe(log.length);
    expect(out.includes(0x1b)).toBe(false);
    expect(out.toString()).toBe(
      '[    0.000000] Linux version 6.1.0\n\\x1b[2J\\x1b]52;c;ZXZpbA==\\x07中文 😀\nprogress 10%\\rprogress 99%\n\ufffd\ufffd\nend\n',
    );
  });

  it('goes on from an offset (--follow) and copies nothing of a missing file', async () => {
    expect((await copied(new PrintableDecoder(), log.length - 5)).out.toString()).toBe('end\n');
    const out = new PassThrough();
    expect(await copyLog(path.join(dir, 'missing.log'), 7, out, new PrintableDecoder())).toBe(7);
  });
});
