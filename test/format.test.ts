/**
 * The code keeps one format: Prettier with the settings in .prettierrc.json (120 columns, single quotes) over the
 * files `npm run format` writes. This test runs the same globs in check mode, so a file left unformatted fails CI
 * with its name; `npm run format` fixes it.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

describe('format', () => {
  it('every source file is as `npm run format` writes it', () => {
    const r = spawnSync('npm', ['run', '-s', 'format:check'], { cwd: ROOT, encoding: 'utf8' });
    const unformatted = `${r.stdout}${r.stderr}`
      .split('\n')
      .filter((l) => l.startsWith('[warn] ') && !l.includes('Code style issues'));
    expect(unformatted).toEqual([]);
    expect(r.status).toBe(0);
  }, 180_000);
});
