/** viz-dist/ is committed and served as is: it must be exactly what the web app's sources build to now. */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildViz, VIZ_DIST } from '../tools/build-viz.ts';

const STALE = 'is stale: run `npm run build:viz` and commit viz-dist/';

describe('the dashboard bundle (viz-dist/)', () => {
  it('is byte-identical to a fresh build of src/viz/web', async () => {
    const fresh = await buildViz();
    expect([...fresh.keys()].sort()).toEqual(['app.css', 'app.js', 'index.html']);
    for (const [name, bytes] of fresh) {
      const path = join(VIZ_DIST, name);
      expect(existsSync(path), `viz-dist/${name} is missing: run \`npm run build:viz\``).toBe(true);
      expect(readFileSync(path).equals(bytes), `viz-dist/${name} ${STALE}`).toBe(true);
    }
    expect(readdirSync(VIZ_DIST).sort(), 'viz-dist/ should hold only what `npm run build:viz` writes').toEqual(
      [...fresh.keys()].sort(),
    );
  });

  it('builds the same bytes twice (deterministic)', async () => {
    const [a, b] = [await buildViz(), await buildViz()];
    for (const [name, bytes] of a) expect(bytes.equals(b.get(name)!), name).toBe(true);
  });
});
