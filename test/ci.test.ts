/** .ci/run's contract: CI=1 for the tests (a missing Chromium fails instead of skipping) and its closing summary. */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const SUMMARY = fileURLToPath(new URL('../.ci/summary.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'nmoe-ci-'));

function summary(report: object | null, typecheckFailed = 0, testRc = 0) {
  const path = join(dir, `${Math.random()}.json`);
  if (report) writeFileSync(path, JSON.stringify(report));
  const r = spawnSync(process.execPath, [SUMMARY, path, String(typecheckFailed), String(testRc)], { encoding: 'utf8' });
  return { code: r.status, last: r.stdout.trim().split('\n').at(-1) };
}

describe('.ci/run', () => {
  it('sets CI=1 before the tests run', () => {
    const script = readFileSync(fileURLToPath(new URL('../.ci/run', import.meta.url)), 'utf8');
    expect(script.indexOf('\nexport CI=1\n')).toBeGreaterThan(-1);
    expect(script.indexOf('\nexport CI=1\n')).toBeLessThan(script.indexOf('npm test'));
  });

  it('ends with passed, failed and skipped (pending + todo) counts, and fails on any failure', () => {
    const report = { numPassedTests: 30, numFailedTests: 0, numPendingTests: 4, numTodoTests: 1 };
    expect(summary(report)).toEqual({ code: 0, last: '30 passed, 0 failed, 5 skipped' });
    expect(summary({ ...report, numFailedTests: 2 }, 0, 1)).toEqual({
      code: 1,
      last: '30 passed, 2 failed, 5 skipped',
    });
    expect(summary(report, 1)).toEqual({ code: 1, last: '30 passed, 1 failed, 5 skipped' });
    expect(summary(report, 0, 1)).toEqual({ code: 1, last: '30 passed, 1 failed, 5 skipped' }); // the runner failed with no failed test
    expect(summary(null, 0, 1)).toEqual({ code: 1, last: '0 passed, 1 failed, 0 skipped' });
    expect(summary({ numPassedTests: 0, numFailedTests: 0, numPendingTests: 9 })).toEqual({
      code: 1,
      last: '0 passed, 0 failed, 9 skipped',
    });
  });
});
