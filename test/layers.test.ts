/**
 * The shape of src/: each top-level folder is a layer, and a file may import only from its own layer or the layers
 * below it. Folders that share a layer do not import each other. The order is the one the code has:
 *
 *   util < tensor, config < model, data < optim, comm < checkpoint, launch < eval < metrics < train, viz < bench < cli
 *
 * eval sits below metrics and train because the trainer runs the in-training eval and metrics records its tags;
 * viz sits beside train (the dashboard reads metrics and data, never the trainer) and below bench, which times it.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const SRC = fileURLToPath(new URL('../src', import.meta.url));
const LAYERS: readonly (readonly string[])[] = [
  ['util'],
  ['tensor', 'config'],
  ['model', 'data'],
  ['optim', 'comm'],
  ['checkpoint', 'launch'],
  ['eval'],
  ['metrics'],
  ['train', 'viz'],
  ['bench'],
  ['cli'],
];

/** Relative module paths a TypeScript file imports or re-exports (static and dynamic). */
function importsOf(source: string): string[] {
  const found = source.matchAll(/(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)['"](\.{1,2}\/[^'"]+)['"]/gm);
  return [...found].map((m) => m[1]!);
}

/** "file: imports folder/x.ts (layer i) from a lower layer j" for every import that breaks the order. */
function layerViolations(files: ReadonlyMap<string, string>, layers: readonly (readonly string[])[]): string[] {
  const layerOf = (folder: string) => layers.findIndex((l) => l.includes(folder));
  const out: string[] = [];
  for (const [file, source] of files) {
    const from = file.split('/')[0]!;
    const fromLayer = layerOf(from);
    if (fromLayer < 0) {
      out.push(`${file}: src/${from}/ is in no layer (add it to LAYERS in test/layers.test.ts)`);
      continue;
    }
    for (const spec of importsOf(source)) {
      const target = normalize(join(dirname(file), spec));
      if (target.startsWith('..')) continue; // outside src/ (package.json and the like)
      const to = target.split('/')[0]!;
      if (to === from || !target.includes('/')) continue;
      const toLayer = layerOf(to);
      if (toLayer > fromLayer || toLayer === fromLayer)
        out.push(`${file}: imports ${target} (${to}, layer ${toLayer}) from ${from} (layer ${fromLayer})`);
    }
  }
  return out;
}

function sources(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (!e.isFile() || !/\.tsx?$/.test(e.name)) continue;
    const path = join(e.parentPath, e.name);
    out.set(relative(SRC, path), readFileSync(path, 'utf8'));
  }
  return out;
}

describe('layers', () => {
  it('every import in src/ goes to its own folder or a lower layer', () => {
    const files = sources(SRC);
    expect(files.size).toBeGreaterThan(200);
    expect(layerViolations(files, LAYERS)).toEqual([]);
  });

  it('the checker finds an upward import, an import between folders of one layer, and a folder in no layer', () => {
    const files = new Map([
      [
        'model/attention.ts',
        "import { Trainer } from '../train/trainer.ts';\nimport type { Backend } from '../tensor/backend.ts';",
      ],
      ['data/loader/build.ts', "const m = await import('../../model/spec.ts');"],
      ['tensor/cpu/ops.ts', "export { x } from '../../util/errors.ts';\nimport './local.ts';"],
      ['extras/thing.ts', "import { a } from '../util/x.ts';"],
    ]);
    expect(layerViolations(files, LAYERS)).toEqual([
      'model/attention.ts: imports train/trainer.ts (train, layer 7) from model (layer 2)',
      'data/loader/build.ts: imports model/spec.ts (model, layer 2) from data (layer 2)',
      'extras/thing.ts: src/extras/ is in no layer (add it to LAYERS in test/layers.test.ts)',
    ]);
  });
});
