/**
 * Bundles the dashboard's web app (src/viz/web) into viz-dist/: index.html, app.js (Preact, uPlot and the app,
 * minified) and app.css (the app's styles with uPlot's). viz-dist/ is committed and shipped, so `nmoe viz` serves it
 * with no build step at run time; test/viz-bundle.test.ts fails when it is older than the sources.
 *
 * The output is deterministic (no timestamps, no absolute paths, no source maps): the same sources give the same
 * bytes. index.html names the bundle with a content hash (`app.js?v=…`), so a browser never runs a stale cached one.
 *
 *   npm run build:viz
 */
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { makeDirs } from '../src/util/dirs.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const WEB = join(ROOT, 'src/viz/web');
export const VIZ_DIST = join(ROOT, 'viz-dist');

/** The bundle in memory: file name in viz-dist/ -> bytes. */
export async function buildViz(): Promise<Map<string, Buffer>> {
  const result = await build({
    absWorkingDir: ROOT,
    entryPoints: [
      { in: join(WEB, 'main.tsx'), out: 'app' },
      { in: join(WEB, 'styles.css'), out: 'app' },
    ],
    outdir: VIZ_DIST,
    bundle: true,
    minify: true,
    format: 'esm',
    target: ['chrome110', 'firefox115', 'safari16'],
    jsx: 'automatic',
    jsxImportSource: 'preact',
    tsconfig: join(WEB, 'tsconfig.json'),
    legalComments: 'eof',
    charset: 'utf8',
    write: false,
    logLevel: 'silent',
  });
  const files = new Map(result.outputFiles.map((f) => [f.path.slice(VIZ_DIST.length + 1), Buffer.from(f.contents)]));
  const hash = (name: string) => createHash('sha256').update(files.get(name)!).digest('hex').slice(0, 12);
  const html = readFileSync(join(WEB, 'index.html'), 'utf8')
    .replace('%JS_HASH%', hash('app.js'))
    .replace('%CSS_HASH%', hash('app.css'));
  files.set('index.html', Buffer.from(html));
  return files;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const files = await buildViz();
  makeDirs(VIZ_DIST);
  for (const [name, bytes] of files) {
    writeFileSync(join(VIZ_DIST, name), bytes);
    console.log(`viz-dist/${name}  ${(bytes.length / 1024).toFixed(1)} KB`);
  }
}
