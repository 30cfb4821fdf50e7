/**
 * The package's public surface (docs/install.md, "Imports"): package.json's "exports" map, its
 * entry files in src/, the typedoc entry points, and what each entry exports, read with the
 * TypeScript compiler from the sources.
 */
import fs from 'node:fs';
import path from 'node:path';
import ts from 'typescript';
import { beforeAll, describe, expect, it } from 'vitest';

interface Target {
  types: string;
  default: string;
}
const pkg = JSON.parse(fs.readFileSync('package.json', 'utf8')) as { exports: Record<string, Target | string>; types: string };
const typedoc = JSON.parse(fs.readFileSync('typedoc.json', 'utf8')) as { entryPoints: string[] };
const tsconfig = JSON.parse(fs.readFileSync('tsconfig.json', 'utf8')) as { compilerOptions: Record<string, unknown> };

/** Subpath ("." or "./network") -> its source file (dist/X.js <- src/X.ts). */
const entries = new Map<string, string>();
for (const [subpath, target] of Object.entries(pkg.exports)) {
  if (typeof target === 'string') continue;
  entries.set(subpath, target.default.replace(/^\.\/dist\//u, 'src/').replace(/\.js$/u, '.ts'));
}

/** The module indexes whose every export must be public from some subpath. */
const MODULE_INDEXES = [
  'src/sandbox/index.ts',
  'src/container/index.ts',
  'src/volume/index.ts',
  'src/network/index.ts',
  'src/network/cni/index.ts',
  'src/devices/index.ts',
  'src/nfv/index.ts',
  'src/guest/index.ts',
  'src/hypervisor/index.ts',
  'src/image/index.ts',
  'src/errors.ts',
];

let checker: ts.TypeChecker;
let program: ts.Program;

function exportsOf(file: string): Map<string, ts.Symbol> {
  const source = program.getSourceFile(path.resolve(file));
  if (!source) throw new Error(`${file} is not in the program`);
  const module = checker.getSymbolAtLocation(source);
  if (!module) throw new Error(`${file} is not a module`);
  return new Map(checker.getExportsOfModule(module).map((s) => [s.name, s]));
}

function isInternal(symbol: ts.Symbol): boolean {
  const target = symbol.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(symbol) : symbol;
  return (target.declarations ?? []).some((d) => ts.getJSDocTags(d).some((tag) => tag.tagName.text === 'internal'));
}

beforeAll(() => {
  const files = [...new Set([...entries.values(), ...MODULE_INDEXES])].map((f) => path.resolve(f));
  program = ts.createProgram(files, {
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
    lib: ['lib.es2023.d.ts', 'lib.esnext.disposable.d.ts'],
    types: ['node'],
    noEmit: true,
    skipLibCheck: true,
  });
  checker = program.getTypeChecker();
}, 120_000);

describe('the package exports', () => {
  it('map each subpath to built JS and its typings, from an entry file in src/', () => {
    expect([...entries.keys()].sort()).toEqual(['.', './devices', './guest', './hypervisor', './image', './network', './nfv']);
    for (const [subpath, target] of Object.entries(pkg.exports)) {
      if (subpath === './package.json') continue;
      const { types, default: js } = target as Target;
      expect(types, subpath).toBe(js.replace(/\.js$/u, '.d.ts'));
      expect(fs.existsSync(entries.get(subpath)!), `${subpath}: ${entries.get(subpath)}`).toBe(true);
    }
    expect(pkg.types).toBe((pkg.exports['.'] as Target).types);
  });

  it('are the entry points of the API reference (npm run docs)', () => {
    expect([...typedoc.entryPoints].sort()).toEqual([...entries.values()].sort());
  });

  it('leave @internal members out of the typings (stripInternal)', () => {
    expect(tsconfig.compilerOptions['stripInternal']).toBe(true);
  });

  it('reach every export of the module indexes from some subpath', () => {
    const reachable = new Set<string>();
    for (const file of entries.values()) for (const name of exportsOf(file).keys()) reachable.add(name);
    const lost: string[] = [];
    for (const index of MODULE_INDEXES) {
      for (const [name, symbol] of exportsOf(index)) if (!reachable.has(name) && !isInternal(symbol)) lost.push(`${index}: ${name}`);
    }
    expect(lost).toEqual([]);
  });

  it('load, and export at run time every value their typings name', async () => {
    for (const [subpath, file] of entries) {
      const loaded = (await import(path.resolve(file))) as Record<string, unknown>;
      const values = [...exportsOf(file)].filter(([, symbol]) => {
        const target = symbol.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(symbol) : symbol;
        return (target.flags & ts.SymbolFlags.Value) !== 0;
      });
      expect(values.length, subpath).toBeGreaterThan(0);
      const missing = values.map(([name]) => name).filter((name) => loaded[name] === undefined);
      expect(missing, subpath).toEqual([]);
    }
  });

  it('keep the root to the core: the main classes, and none of the subpaths\' modules as a whole', () => {
    const root = exportsOf(entries.get('.')!);
    for (const name of ['Sandbox', 'Container', 'Process', 'Volume', 'Network', 'SandboxConfig', 'ContainerConfig', 'SandboxError', 'VmpodError', 'InvalidStateError']) {
      expect(root.has(name), name).toBe(true);
    }
    for (const subpath of ['./devices', './guest', './hypervisor']) {
      const inRoot = [...exportsOf(entries.get(subpath)!).keys()].filter((name) => root.has(name));
      // Only what a sandbox's config needs comes from there (and CallOptions, the same type everywhere).
      expect(inRoot.filter((name) => !['MachineProfile', 'CallOptions'].includes(name)), subpath).toEqual([]);
    }
    const network = [...exportsOf(entries.get('./network')!).keys()].filter((name) => root.has(name));
    expect(network.sort()).toEqual([
      'AlreadyExistsError', 'CniNetworkSpec', 'InterfaceSettings', 'InvalidArgumentError', 'Network', 'NetworkEndpoint', 'NetworkOpenOptions',
      'NetworkOptions', 'NotFoundError', 'SandboxNetworkConfig',
    ]);
  });
});
