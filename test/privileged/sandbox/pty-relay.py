#!/usr/bin/env python3
"""Runs a command on a new pseudo-terminal, as a terminal emulator would, for the CLI tests.

Usage: pty-relay.py ROWS COLS -- COMMAND [ARG...]

The command gets the pty's slave as stdin, stdout, stderr and controlling terminal (its own
session), the window size ROWS x COLS. What it writes to the terminal is copied to stdout.
Stdin takes one JSON object per line:
  {"write": "<base64>"}        bytes typed on the terminal (Ctrl-C is b"\\x03")
  {"resize": [ROWS, COLS]}     TIOCSWINSZ on the master: the kernel sends SIGWINCH to the
                               terminal's foreground process group
When the command has exited and its output is drained, prints "exit CODE" (or "signal N") on
stderr and exits 0. Without a command-line shell anywhere: the command is an argument vector.
"""
import base64
import fcntl
import json
import os
import select
import signal
import struct
import sys
import termios


def set_size(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack('HHHH', rows, cols, 0, 0))


def main():
    rows, cols = int(sys.argv[1]), int(sys.argv[2])
    if sys.argv[3] != '--':
        raise SystemExit('usage: pty-relay.py ROWS COLS -- COMMAND [ARG...]')
    argv = sys.argv[4:]
    master, slave = os.openpty()
    set_size(master, rows, cols)
    pid = os.fork()
    if pid == 0:
        os.close(master)
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        if slave > 2:
            os.close(slave)
        os.execvp(argv[0], argv)
    os.close(slave)
    pending = b''
    status = None
    stdin_open = True
    while True:
        readers = [master] + ([sys.stdin.fileno()] if stdin_open else [])
        ready, _, _ = select.select(readers, [], [], 0.2)
        if master in ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every slave end is closed
                data = b''
            if not data:
                break
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        if stdin_open and sys.stdin.fileno() in ready:
            chunk = os.read(sys.stdin.fileno(), 65536)
            if not chunk:
                stdin_open = False
            pending += chunk
            while b'\n' in pending:
                line, pending = pending.split(b'\n', 1)
                message = json.loads(line)
                if 'write' in message:
                    os.write(master, base64.b64decode(message['write']))
                if 'resize' in message:
                    set_size(master, message['resize'][0], message['resize'][1])
        if status is None:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
    if status is None:
        _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status):
        sys.stderr.write('exit %d\n' % os.WEXITSTATUS(status))
    else:
        sys.stderr.write('signal %d\n' % os.WTERMSIG(status))


if __name__ == '__main__':
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    main()
