/**
 * Tests that run the PyTorch tools need `/usr/bin/python3` with torch (Debian's python3-torch, which .ci/run
 * installs). Where it is missing they are skipped with the install command, except under CI, where the missing
 * prerequisite is a failure (as for Chromium).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { describe, it } from 'vitest';

export const TORCH_PYTHON = '/usr/bin/python3';
const INSTALL = 'apt-get install -y --no-install-recommends python3-torch';

export const haveTorch =
  existsSync(TORCH_PYTHON) && spawnSync(TORCH_PYTHON, ['-c', 'import torch'], { stdio: 'ignore' }).status === 0;

/** Call at the top of a test file whose suite `name` needs torch: fails under CI, else warns that it skips. */
export function requireTorch(name: string, file: string): void {
  if (haveTorch) return;
  if (process.env.CI) {
    describe(name, () => {
      it('needs torch for /usr/bin/python3', () => {
        throw new Error(`${TORCH_PYTHON} cannot import torch: ${INSTALL}`);
      });
    });
  } else {
    console.warn(`${file}: skipped, ${TORCH_PYTHON} cannot import torch. To run it: ${INSTALL}`);
  }
}
