/**
 * The installed command: package.json's `bin` is what `npx vmpod` and a global install run
 * directly, so the built file must be executable with a node shebang. Needs the TypeScript
 * build (`npm ci` runs it through `prepare`).
 */
import { spawnSync } from 'node:child_process';
import { accessSync, constants, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as { version: string; bin: Record<string, string> };
const bin = path.resolve(pkg.bin['vmpod']!);

describe('the vmpod bin', () => {
  it('is built, executable and starts with a node shebang', () => {
    expect(() => accessSync(bin, constants.X_OK), `${bin}: build it with "npm run build:ts"`).not.toThrow();
    expect(readFileSync(bin, 'utf8').split('\n')[0]).toBe('#!/usr/bin/env node');
  });

  it('runs as a program: --version prints the package version, --help the commands', () => {
    const version = spawnSync(bin, ['--version'], { encoding: 'utf8' });
    expect(version.status).toBe(0);
    expect(version.stdout).toBe(`vmpod ${pkg.version}\n`);
    const help = spawnSync(bin, ['--help'], { encoding: 'utf8' });
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/^Usage: vmpod COMMAND/u);
    expect(help.stdout).toMatch(/\n {2}run +run a container in a new sandbox/u);
  });
});
