/**
 * nmoe's version and the git commit of its source tree, recorded in checkpoints and the run registry. Git is asked
 * once per process (at start, never on the training hot path); outside a git checkout both are null.
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const NMOE_VERSION = '0.1.0';

export interface GitInfo {
  sha: string | null;
  dirty: boolean | null;
}

let cached: GitInfo | undefined;

/** HEAD of the repository nmoe runs from, and whether its work tree has uncommitted changes. */
export function gitInfo(): GitInfo {
  if (cached) return cached;
  const cwd = fileURLToPath(new URL('../..', import.meta.url));
  const git = (args: string[]) =>
    execFileSync('git', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 10_000 });
  try {
    cached = { sha: git(['rev-parse', 'HEAD']).trim(), dirty: git(['status', '--porcelain']).trim().length > 0 };
  } catch {
    cached = { sha: null, dirty: null };
  }
  return cached;
}
