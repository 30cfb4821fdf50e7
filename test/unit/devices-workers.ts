/**
 * Runs worker scripts (devices-hugepages-worker.ts, devices-vfio-worker.ts) as separate Node
 * processes with tsx's loader, started together: each says it is ready in a barrier folder and
 * waits there until every one is, so that they really run at the same time (a child takes a
 * while to load, more than a short worker needs to finish). Returns each one's JSON report.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';

const run = promisify(execFile);

export async function runWorkers<O extends { name: string; barrier?: string }, R>(
  script: string,
  workers: readonly O[],
  timeoutMs = 120_000,
): Promise<R[]> {
  const barrier = await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-barrier-'));
  try {
    const done = workers.map((w) =>
      run(process.execPath, ['--import', 'tsx', script, JSON.stringify({ ...w, barrier })], { timeout: timeoutMs, maxBuffer: 16 << 20 }),
    );
    const settled = Promise.allSettled(done);
    const deadline = Date.now() + timeoutMs;
    while ((await fs.readdir(barrier)).filter((f) => f.endsWith('.ready')).length < workers.length) {
      if (Date.now() > deadline) throw new Error('the workers did not all start');
      // A worker that died before getting ready must not leave us waiting.
      const early = await Promise.race([settled.then(() => true), sleep(5).then(() => false)]);
      if (early) break;
    }
    await fs.writeFile(path.join(barrier, 'go'), '');
    const results = await Promise.all(done);
    return results.map(({ stdout }) => JSON.parse(stdout.trim().split('\n').at(-1)!) as R);
  } finally {
    await fs.rm(barrier, { recursive: true, force: true });
  }
}
