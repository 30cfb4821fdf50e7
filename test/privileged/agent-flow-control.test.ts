// The flow-control invariant against the real agent (run on the host): a container writes
// without end to stdout and stderr, the host reads nothing, then a little, then slowly. The
// host's buffers (each Readable's readableLength) never hold more than the window, INITIAL_WINDOW,
// whatever the reader did (test/unit/agent-flow-control.test.ts measures the granted window
// itself against a fake agent).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { INITIAL_WINDOW } from '../../src/agent/framing.js';
import type { StdioReadable } from '../../src/agent/stdio.js';
import { AGENT_BINARY, haveAgent, haveBusybox, isRoot, minimalSpec, startHostAgent, uniqueId, type HostAgent } from './agent-host.js';

const ready = isRoot && haveAgent && haveBusybox;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Waits until `value()` has not changed for `quietMs` (at most `maxMs`), checking `each` all along. */
async function settle(value: () => number, each: () => void, quietMs = 300, maxMs = 20_000): Promise<void> {
  const started = Date.now();
  let last = value();
  let since = Date.now();
  while (Date.now() - started < maxMs) {
    await sleep(5);
    each();
    const now = value();
    if (now !== last) {
      last = now;
      since = Date.now();
    } else if (Date.now() - since >= quietMs) return;
  }
  throw new Error(`still moving after ${maxMs} ms`);
}

describe.skipIf(!ready)(`flow control with the real agent (${ready ? 'root' : `needs root and ${AGENT_BINARY}`})`, () => {
  let agent: HostAgent;
  beforeAll(async () => {
    agent = await startHostAgent({ cgroups: false });
  });
  afterAll(async () => {
    expect(await agent?.cleanup()).toBe(0);
  });

  it('a stalled, partial and slow reader of stdout and stderr: the host holds at most the window', async () => {
    const id = uniqueId('fc');
    const client = agent.client;
    // Both outputs flooded without end (busybox yes); the agent sends only within its credit.
    await client.createContainer({ id, config: minimalSpec(['sh', '-c', 'yes out & yes err >&2']), rootfs: agent.rootfs });
    const { stdout, stderr } = (await client.openStdio(id, { stdout: true, stderr: true })) as { stdout: StdioReadable; stderr: StdioReadable };
    await client.startContainer(id);
    const streams = { stdout, stderr };
    const consumed = { stdout: 0, stderr: 0 };
    const most = { stdout: 0, stderr: 0 };
    const check = (when: string) => {
      for (const fd of ['stdout', 'stderr'] as const) {
        const held = streams[fd].readableLength;
        most[fd] = Math.max(most[fd], held);
        expect(held, `${fd}: bytes held on the host (${when})`).toBeLessThanOrEqual(INITIAL_WINDOW);
      }
    };
    const total = () => stdout.readableLength + stderr.readableLength + consumed.stdout + consumed.stderr;
    try {
      await settle(total, () => check('while the agent fills the window'));
      check('stalled');
      expect(stdout.readableLength, 'the agent filled the stdout window').toBe(INITIAL_WINDOW);
      for (const bite of [1, 4096, 100 * 1024, 300 * 1024, 600 * 1024]) {
        for (const fd of ['stdout', 'stderr'] as const) {
          const b = streams[fd].read(Math.min(bite, streams[fd].readableLength)) as Buffer | null;
          consumed[fd] += b?.length ?? 0;
        }
        await settle(total, () => check(`after reads of ${bite}`));
        check(`stalled after reads of ${bite}`);
      }
      for (let i = 0; i < 100; i++) {
        for (const fd of ['stdout', 'stderr'] as const) {
          const b = streams[fd].read(Math.min(32 * 1024, streams[fd].readableLength)) as Buffer | null;
          consumed[fd] += b?.length ?? 0;
        }
        await sleep(2);
        check(`slow read ${i}`);
      }
      await settle(total, () => check('after the slow reads'));
      expect(consumed.stdout).toBeGreaterThan(INITIAL_WINDOW);
      expect(consumed.stderr).toBeGreaterThan(INITIAL_WINDOW);
      console.info(`flow control, real agent: consumed ${consumed.stdout}/${consumed.stderr}, most held ${most.stdout}/${most.stderr} (stdout/stderr)`);
    } finally {
      stdout.destroy();
      stderr.destroy();
      await client.signal(id, 'SIGKILL', { all: true });
      await client.wait(id, { timeoutMs: 10_000 });
      await client.deleteContainer(id);
    }
  });
});
