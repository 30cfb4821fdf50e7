"""A caller of vmpod-runtime in the way conmon and containerd's shim are: a child subreaper that
runs one command (create, or exec --detach) with stdio of its own, then waits for the process
whose pid the command wrote to its pid file (the monitor, reparented to us) and reports how it
ended. With "console", it listens on a console socket, receives the terminal's master fd
(SCM_RIGHTS) while the command runs, sets the window size, runs "start", types the input and
reads the terminal until it hangs up.

argv[1]: JSON {argv, pidFile, stdout, stderr, stdin?, console?, start?, rows?, cols?}
stdout: one JSON line once the command returned ({"rc": N, "name"?}), one when the process
ended ({"exit": N|null, "signal": N|null, "console"?: "..."}).
"""
import ctypes
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
TIOCSWINSZ = 0x5414

cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    sys.exit('prctl failed')

srv = None
if cfg.get('console'):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(cfg['console'])
    srv.listen(1)

r, w = os.pipe()
out = open(cfg['stdout'], 'wb')
err = open(cfg['stderr'], 'wb')
proc = subprocess.Popen(cfg['argv'], stdin=r, stdout=out, stderr=err)
os.close(r)
master = None
name = None
if srv is not None:
    srv.settimeout(300)
    try:
        conn, _ = srv.accept()
        msg, fds, _, _ = socket.recv_fds(conn, 1024, 1)
        name = msg.decode()
        master = fds[0]
        conn.close()
    except OSError:
        pass
rc = proc.wait()
print(json.dumps({'rc': rc, 'name': name}), flush=True)
if rc != 0:
    sys.exit(0)
pid = int(open(cfg['pidFile']).read())
if master is not None:
    import fcntl
    fcntl.ioctl(master, TIOCSWINSZ, struct.pack('HHHH', cfg.get('rows', 33), cfg.get('cols', 77), 0, 0))
if cfg.get('start'):
    subprocess.run(cfg['start'], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
data = cfg.get('stdin')
if master is not None:
    if data:
        os.write(master, data.encode())
elif data is not None:
    os.write(w, data.encode())
os.close(w)

screen = b''
if master is not None:
    deadline = time.time() + 300
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk

while True:
    got, status = os.waitpid(-1, 0)
    if got == pid:
        break
result = {
    'exit': os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
    'signal': os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
}
if master is not None:
    result['console'] = screen.decode(errors='replace')
print(json.dumps(result), flush=True)
