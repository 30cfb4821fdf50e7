/**
 * The typings users get (docs/install.md): the declarations tsc emits with the package's
 * tsconfig (stripInternal) must be whole: a consumer project that imports every subpath
 * type-checks against them with skipLibCheck off, and no @internal declaration is left in them.
 * (A class that `implements` an @internal interface, or a public signature that names an
 * @internal type, breaks them: the declaration is gone, the reference stays.)
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const repo = path.resolve('.');
const tsc = path.join(repo, 'node_modules', 'typescript', 'bin', 'tsc');
const pkg = JSON.parse(fs.readFileSync('package.json', 'utf8')) as { exports: Record<string, unknown> };
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmpod-typings-'));
const consumer = path.join(dir, 'consumer');
const installed = path.join(consumer, 'node_modules', 'vmpod');
const dist = path.join(installed, 'dist');

let emitted: { status: number | null; output: string };

beforeAll(() => {
  const result = spawnSync(process.execPath, [tsc, '-p', path.join(repo, 'tsconfig.json'), '--emitDeclarationOnly', '--declarationMap', 'false', '--outDir', dist], {
    encoding: 'utf8',
  });
  emitted = { status: result.status, output: `${result.stdout}${result.stderr}` };
  fs.copyFileSync(path.join(repo, 'package.json'), path.join(installed, 'package.json'));
  for (const dep of ['@types', 'eventemitter3']) fs.symlinkSync(path.join(repo, 'node_modules', dep), path.join(consumer, 'node_modules', dep));
}, 180_000);

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function declarationFiles(root: string): string[] {
  return fs.readdirSync(root, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.d.ts')).map((f) => path.join(root, f));
}

describe('the emitted typings', () => {
  it('are emitted', () => {
    expect(emitted.status, emitted.output).toBe(0);
  });

  it('type-check in a consumer project importing every subpath, with skipLibCheck off', () => {
    const subpaths = Object.keys(pkg.exports).filter((s) => s !== './package.json').map((s) => s.replace(/^\./u, 'vmpod'));
    const lines = subpaths.map((s, i) => `import * as m${i} from '${s}';`);
    lines.push(`export const modules = [${subpaths.map((_, i) => `m${i}`).join(', ')}];`);
    // A few uses of the root's main types, as a script would write them.
    lines.push(
      `export async function demo(config: m0.SandboxConfig): Promise<number> {`,
      `  await using sandbox = await m0.Sandbox.create(config);`,
      `  await sandbox.start();`,
      `  const c: m0.Container = await sandbox.createContainer({ process: { args: ['true'] } });`,
      `  await c.start();`,
      `  const status: m0.ExitStatus = await c.wait();`,
      `  return status.exitCode;`,
      `}`,
    );
    fs.writeFileSync(path.join(consumer, 'main.ts'), `${lines.join('\n')}\n`);
    fs.writeFileSync(path.join(consumer, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
    const config = {
      compilerOptions: {
        target: 'ES2022', lib: ['ES2023', 'ESNext.Disposable'], module: 'nodenext', moduleResolution: 'nodenext',
        strict: true, skipLibCheck: false, types: ['node'], noEmit: true,
      },
      files: ['main.ts'],
    };
    fs.writeFileSync(path.join(consumer, 'tsconfig.json'), JSON.stringify(config));
    const result = spawnSync(process.execPath, [tsc, '-p', path.join(consumer, 'tsconfig.json')], { encoding: 'utf8' });
    expect(`${result.stdout}${result.stderr}`).toBe('');
    expect(result.status).toBe(0);
  }, 180_000);

  it('leave no @internal declaration in (only the comments of internal modules say it)', () => {
    const left: string[] = [];
    for (const file of declarationFiles(dist)) {
      const text = fs.readFileSync(file, 'utf8');
      const header = /^\/\*\*[\s\S]*?\*\//u.exec(text)?.[0] ?? '';
      const inHeader = header.includes('@module') ? (header.match(/@internal/gu) ?? []).length : 0;
      const all = (text.match(/@internal/gu) ?? []).length;
      if (all > inHeader) left.push(`${path.relative(dist, file)}: ${all - inHeader}`);
    }
    expect(left).toEqual([]);
  });
});
