// Guest assets for the privileged tests, built once and cached across runs (a rebuild happens
// only when an input changes). The agent is a stand-in shell script: the hypervisor tests do not
// depend on the real agent, and can drive the guest through a shell on a virtio-serial port.
import fs from 'node:fs';
import path from 'node:path';
import { buildGuestAssets, type GuestBuildResult } from '../../src/guest/index.js';

/** Persistent cache of the test builds (not a temp dir: keeping it is the point). */
export const TEST_CACHE_DIR = '/var/cache/vmpod/test-guest';

/** The virtio-serial port name the test agent serves a shell on. */
export const TEST_PORT = 'test';

/**
 * Stands in for /sbin/vmpod-agent: prints a line, then serves `sh` on the virtio-serial port
 * named "test" (re-spawned when the host side goes away), or idles as PID 1.
 */
export const TEST_AGENT = `#!/bin/sh
# vmpod test agent (test/privileged/guest-fixture.ts): a shell on the virtio-serial port "${TEST_PORT}".
echo "test-agent: up $(uname -r)"
port=
for i in $(seq 50); do
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = ${TEST_PORT} ] && port=/dev/\${p##*/}
  done
  [ -n "$port" ] && break
  sleep 0.1
done
echo "test-agent: port \${port:-none}"
while :; do
  # A port opens once (a second open is EBUSY): one read-write fd for all three.
  [ -n "$port" ] && sh 0<>"$port" 1>&0 2>&0
  sleep 1
done
`;

let cached: Promise<GuestBuildResult> | undefined;

/** Writes the test agent into the cache (same bytes every run, so the build id is stable). */
export function testAgentPath(name = 'test-agent', text = TEST_AGENT): string {
  fs.mkdirSync(TEST_CACHE_DIR, { recursive: true });
  const file = path.join(TEST_CACHE_DIR, name);
  if (!fs.existsSync(file) || fs.readFileSync(file, 'utf8') !== text) fs.writeFileSync(file, text, { mode: 0o755 });
  fs.chmodSync(file, 0o755);
  return file;
}

/** The test guest assets (built on first use, then reused). */
export function testGuestAssets(): Promise<GuestBuildResult> {
  cached ??= buildGuestAssets({ cacheDir: TEST_CACHE_DIR, agent: testAgentPath(), updateAptLists: true });
  return cached;
}
