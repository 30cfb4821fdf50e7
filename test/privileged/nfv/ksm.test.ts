/**
 * KSM across sandboxes: two idle sandboxes with `ksm: true` (private guest RAM marked
 * mergeable: `mem-merge=on` on QEMU's command line) share pages once KSM runs for a short
 * while; {@link ksmReport} shows it host-wide and per sandbox. KSM's settings are put back
 * afterwards, whatever happens.
 */
import fs from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../../src/sandbox/sandbox.js';
import { configureKsm, ksmAvailable, readKsm, type KsmConfiguration, type KsmSettings } from '../../../src/devices/ksm.js';
import { ksmReport } from '../../../src/nfv/ksm.js';
import { expectNothingLeft, forceCleanup, makeStateDir, skipReason as vmSkip } from '../sandbox/fixture.js';

const skipReason = vmSkip ?? ((await ksmAvailable()) ? undefined : 'the host kernel has no KSM');

describe.skipIf(skipReason)(`KSM across sandboxes${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let stateDir: string;
  let sandboxes: Sandbox[] = [];
  let ksm: KsmConfiguration | undefined;
  let settingsBefore: KsmSettings;

  beforeAll(async () => {
    settingsBefore = (await readKsm()).settings;
    stateDir = await makeStateDir();
    for (let i = 0; i < 2; i++) {
      const sandbox = await Sandbox.create({ stateDir, memoryMiB: 256, sharedFs: false, ksm: true });
      sandboxes.push(sandbox);
      await sandbox.start();
    }
  });

  afterAll(async () => {
    try {
      await ksm?.restore();
      expect((await readKsm()).settings).toEqual(settingsBefore);
      for (const s of sandboxes) await s.delete({ force: true });
      sandboxes = [];
      await expectNothingLeft(stateDir);
    } finally {
      await forceCleanup(stateDir);
    }
  });

  it('marks guest RAM mergeable, and reports the pages KSM shares between two idle sandboxes', async () => {
    for (const s of sandboxes) {
      const cmdline = (await fs.readFile(`/proc/${s.pid}/cmdline`, 'utf8')).split('\0');
      expect(cmdline).toContain('q35,mem-merge=on');
      expect(cmdline).toContain('256M');
    }
    ksm = await configureKsm({ run: 1, pagesToScan: 4000, sleepMillisecs: 20 });
    let report = await ksmReport(sandboxes);
    const deadline = Date.now() + 120_000;
    while (Date.now() < deadline && !(report.host.stats.pagesSharing > 0 && report.sandboxes.every((s) => s.mergingPages > 0))) {
      await new Promise((r) => setTimeout(r, 2000));
      report = await ksmReport(sandboxes);
    }
    console.log(
      `KSM: pages_shared ${report.host.stats.pagesShared}, pages_sharing ${report.host.stats.pagesSharing}, saved ${(report.host.savedBytes / 1048576).toFixed(1)} MiB; ` +
        report.sandboxes.map((s) => `${s.id}: ${s.mergingPages} merged pages`).join(', '),
    );
    expect(report.sandboxes.map((s) => s.id)).toEqual(sandboxes.map((s) => s.id));
    for (const s of report.sandboxes) {
      expect(s.mergeable).toBe(true);
      expect(s.mergingPages).toBeGreaterThan(0);
    }
    expect(report.host.stats.pagesSharing).toBeGreaterThan(0);
  });
});
