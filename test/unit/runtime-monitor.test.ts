/**
 * The monitor's host-side pieces without a VM: the terminal it opens and sends over the console
 * socket, its relay between that terminal and the container's streams (and the window size it
 * passes on at SIGWINCH), and how it exits with the container's status.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tty from 'node:tty';
import { PassThrough } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { native } from '../../src/native.js';
import { exitWith, openTerminal, wireStdio } from '../../src/runtime/monitor.js';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vt-rtmon-'));
});
afterEach(() => {
  vi.restoreAllMocks();
  vi.useRealTimers();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('the console socket', () => {
  it('gets a message whose data is the pty\'s name; the monitor keeps the slave, a terminal, and lets the master go', async () => {
    const socket = path.join(dir, 'console.sock');
    const received = new Promise<string>((resolve) => {
      const server = net.createServer((conn) => {
        let text = '';
        conn.on('data', (d: Buffer) => (text += d.toString()));
        conn.on('end', () => {
          server.close();
          resolve(text);
        });
      });
      server.listen(socket);
    });
    await new Promise((resolve) => setTimeout(resolve, 20));
    const terminal = openTerminal(native(), socket);
    try {
      expect(terminal.name).toMatch(/^\/dev\/pts\/[0-9]+$/u);
      expect(terminal.master).toBe(-1);
      expect(tty.isatty(terminal.slave)).toBe(true);
      expect(await received).toBe(terminal.name);
    } finally {
      native().closeFd(terminal.slave);
    }
  });
  it('a socket nobody listens on fails with a RuntimeError naming it', () => {
    expect(() => openTerminal(native(), path.join(dir, 'none.sock'))).toThrow(`console socket ${path.join(dir, 'none.sock')}: connect`);
  });
});

describe('the terminal relay', () => {
  it('carries typed input to the container and its output back, raw (no echo, no \\r\\n added), and the window size at SIGWINCH', async () => {
    const pty = native().openPty();
    native().setRawMode(pty.slave);
    const proc = { stdin: new PassThrough(), stdout: new PassThrough(), stderr: null };
    const sizes: { rows: number; cols: number }[] = [];
    const before = process.listeners('SIGWINCH').length;
    const io = wireStdio(proc, { master: -1, slave: pty.slave, name: pty.name }, (size) => sizes.push(size), native());
    const master = new tty.ReadStream(pty.master);
    try {
      const typed = new Promise<string>((resolve) => proc.stdin.once('data', (d: Buffer) => resolve(d.toString())));
      fs.writeSync(pty.master, 'ls\n');
      expect(await typed).toBe('ls\n');
      const shown = new Promise<string>((resolve) => master.once('data', (d: Buffer) => resolve(d.toString())));
      proc.stdout.write('a\nb\n');
      expect(await shown).toBe('a\nb\n');
      native().setWindowSize(pty.master, 33, 77);
      process.emit('SIGWINCH', 'SIGWINCH');
      expect(sizes).toEqual([{ rows: 33, cols: 77 }]);
      proc.stdout.end();
      await io.done();
    } finally {
      for (const l of process.listeners('SIGWINCH').slice(before)) process.off('SIGWINCH', l);
      master.destroy();
      proc.stdin.destroy();
    }
  });
});

describe('the monitor\'s exit', () => {
  it('exits with the code, or re-raises the signal that killed the container on itself', () => {
    vi.useFakeTimers();
    const exit = vi.spyOn(process, 'exit').mockImplementation(() => undefined as never);
    const kill = vi.spyOn(process, 'kill').mockImplementation(() => true);
    exitWith({ exitCode: 3, signal: 0 });
    expect(exit).toHaveBeenCalledWith(3);
    expect(kill).not.toHaveBeenCalled();
    exit.mockClear();
    exitWith({ exitCode: 137, signal: 9 });
    expect(kill).toHaveBeenCalledWith(process.pid, 'SIGKILL');
    // Still alive (the kill was mocked): 128 + N after a moment.
    expect(exit).not.toHaveBeenCalled();
    vi.advanceTimersByTime(300);
    expect(exit).toHaveBeenCalledWith(137);
    // A stop signal is not raised (it would stop, not end, the monitor): 128 + N.
    kill.mockClear();
    exit.mockClear();
    exitWith({ exitCode: 147, signal: 19 });
    expect(kill).not.toHaveBeenCalled();
    vi.advanceTimersByTime(300);
    expect(exit).toHaveBeenCalledWith(147);
    vi.clearAllTimers();
  });
});
