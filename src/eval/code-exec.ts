/**
 * Code tasks (HumanEval): the model completes a Python function, and the completion passes when the task's own
 * unit tests run without error. Each program runs in a fresh `python3 -I` (isolated: no user site, no PYTHON*
 * variables) in an empty temporary folder, with a wall-clock limit, and in a network namespace of its own
 * (`unshare --net --map-root-user`), so it can reach no network, not even this machine's loopback.
 *
 * This is not a security boundary: the program runs as the user who runs nmoe and can read and write their files.
 * nmoe runs model-written programs only when asked (`nmoe eval --allow-code-exec`), never in `core` and never
 * inside `nmoe train`.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UserError } from '../util/errors.ts';

export interface CodeItem {
  /** The function's signature and docstring, which the model continues. */
  prompt: string;
  /** The dataset's reference body (few-shot demonstrations show it). */
  solution: string;
  /** Python defining `check(candidate)`. */
  test: string;
  entryPoint: string;
}

export interface ExecLimits {
  python: string;
  timeoutS: number;
}

export type ExecOutcome = 'passed' | 'failed' | 'timeout';

/**
 * Where a completion stops being the function's body: the start of another top-level statement. Models go on
 * writing after the body; only the body is the answer.
 */
const BODY_ENDS = ['\ndef ', '\nclass ', '\nif __name__', '\nprint(', '\nassert ', '\n#'];

export function functionBody(completion: string): string {
  const cut = Math.min(...BODY_ENDS.map((s) => completion.indexOf(s)).filter((i) => i >= 0), completion.length);
  return completion.slice(0, cut);
}

/** True once the generated text holds a whole body, so decoding can stop. */
export const bodyComplete = (completion: string): boolean => BODY_ENDS.some((s) => completion.includes(s));

/** The program that passes exactly when the completed function passes the task's tests. */
export function testProgram(item: CodeItem, completion: string): string {
  return `${item.prompt}${functionBody(completion)}\n\n${item.test}\n\ncheck(${item.entryPoint})\n`;
}

const NO_NETWORK = ['unshare', '--net', '--map-root-user'];
let isolationChecked = false;

/** Fails, with the fix, where this machine cannot give a program a network namespace of its own. */
export function checkIsolation(python: string): void {
  if (isolationChecked) return;
  const r = spawnSync(NO_NETWORK[0]!, [...NO_NETWORK.slice(1), python, '-I', '-c', 'pass'], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  if (r.error || r.status !== 0) {
    const why = r.error ? r.error.message : (r.stderr.trim().split('\n').at(-1) ?? `exit ${r.status}`);
    throw new UserError(
      `code tasks run each program without network access through \`${NO_NETWORK.join(' ')} ${python}\`, which fails here (${why}). ` +
        'Fix: install util-linux and the python named by the task (python = "..."), and allow unprivileged user namespaces ' +
        '(sysctl kernel.unprivileged_userns_clone=1; in a container, run it with user namespaces allowed).',
    );
  }
  isolationChecked = true;
}

export function runProgram(program: string, limits: ExecLimits): ExecOutcome {
  checkIsolation(limits.python);
  const cwd = mkdtempSync(join(tmpdir(), 'nmoe-code-'));
  try {
    const r = spawnSync(NO_NETWORK[0]!, [...NO_NETWORK.slice(1), limits.python, '-I', '-'], {
      input: program,
      cwd,
      encoding: 'utf8',
      timeout: limits.timeoutS * 1000,
      killSignal: 'SIGKILL',
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: cwd, LANG: 'C.UTF-8' },
      maxBuffer: 1 << 20,
    });
    if (r.error && (r.error as NodeJS.ErrnoException).code === 'ETIMEDOUT') return 'timeout';
    if (r.signal === 'SIGKILL') return 'timeout';
    return r.status === 0 ? 'passed' : 'failed';
  } finally {
    rmSync(cwd, { recursive: true, force: true });
  }
}
