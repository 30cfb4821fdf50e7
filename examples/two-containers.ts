/**
 * Two containers in one sandbox: a web server that keeps running, and a client run to
 * completion that fetches a page from it. Containers of a sandbox share its VM's network, so the
 * client reaches the server on 127.0.0.1. Both use the builtin busybox rootfs.
 *
 *   cd examples && node --import tsx two-containers.ts
 *
 * Ctrl-C at any point cancels what is under way, deletes the sandbox, and exits 130.
 */
import { abortOnSignals, Sandbox } from 'vmpod';

// SIGINT/SIGTERM abort this signal instead of killing the process: pass it to every call.
const signal = abortOnSignals();

// `await using`: the sandbox (VM, daemons, mounts, state) is deleted when the script leaves
// this scope, also on an error or Ctrl-C.
await using sandbox = await Sandbox.create({ cpus: 1, memoryMiB: 256 }, { signal });
sandbox.on('progress', (message) => console.error(message)); // the first boot builds the guest
await sandbox.start({ signal });

// The server: busybox httpd in the foreground, serving one page. Deleted (killed) at scope end.
await using server = await sandbox.createContainer({
  id: 'web',
  signal,
  process: { args: ['sh', '-c', 'mkdir -p /tmp/www && echo "hello from $(hostname)" > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www'] },
});
server.stderr!.pipe(process.stderr);
await server.start({ signal });

// The client: run() creates a container, collects its output, waits for its exit and deletes
// it. It retries until the server listens.
const client = await sandbox.run(
  ['sh', '-c', 'for i in $(seq 20); do wget -qO- http://127.0.0.1:8080/ && exit 0; sleep 0.5; done; exit 1'],
  { signal, timeoutMs: 60_000 },
);
console.log(`client: exit ${client.exitCode}, got "${client.stdout.trim()}"`);

// What the sandbox looks like now (plain JSON).
const info = await sandbox.inspect({ signal });
console.log(`sandbox ${info.id}: ${info.state}, containers: ${info.containers?.map((c) => `${c.id} (${c.state})`).join(', ')}`);
process.exitCode = client.exitCode;
