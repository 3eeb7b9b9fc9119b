/**
 * What a flow tree holds against its plan, source by source: the tokens of every `.npy` below the source's folder
 * (read from the headers, as the loader counts them; with `--num-workers` preps, the workers' folders too), the
 * tokenizers its manifests name, and a state: complete (at least its quota), short, missing, unfinished (a prep
 * journal is there: an interrupted prep) or damaged (a shard the loader would refuse).
 */
import { existsSync, readdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { UserError } from '../../util/errors.ts';
import { dataProblem } from '../errors.ts';
import { readManifest } from '../manifest.ts';
import { JOURNAL_FILE } from '../prep/journal.ts';
import { NpyShard } from '../shard.ts';
import { listFiles } from '../sources/paths.ts';
import type { FlowSource } from './plan.ts';

export type SourceState = 'complete' | 'short' | 'missing' | 'unfinished' | 'damaged';

export interface SourceStatus extends FlowSource {
  tokens: number;
  shards: number;
  tokenizers: string[];
  state: SourceState;
  /** Why a damaged source is damaged (the loader's message). */
  damage: string | null;
}

/** The source folder and its `--num-workers` parts, `worker_NNN/`. */
function prepFolders(dir: string): string[] {
  const workers = readdirSync(dir).filter((d) => /^worker_\d{3}$/.test(d));
  return [dir, ...workers.map((w) => join(dir, w))];
}

export function sourceStatus(s: FlowSource): SourceStatus {
  const empty = { ...s, tokens: 0, shards: 0, tokenizers: [], damage: null };
  if (!existsSync(s.dir)) return { ...empty, state: 'missing' };
  const files = listFiles(s.dir);
  const tokenizers = [
    ...new Set(files.filter((f) => basename(f) === 'manifest.json').map((f) => readManifest(f).tokenizer)),
  ];
  let tokens = 0,
    shards = 0;
  for (const f of files.filter((p) => p.endsWith('.npy'))) {
    try {
      const shard = NpyShard.open(f);
      shard.close();
      tokens += shard.length;
      shards++;
    } catch (err) {
      if (!(err instanceof UserError)) throw err;
      return { ...empty, tokenizers, state: 'damaged', damage: err.message };
    }
  }
  const unfinished = prepFolders(s.dir).some((d) => existsSync(join(d, JOURNAL_FILE)));
  const state = unfinished ? 'unfinished' : shards === 0 ? 'missing' : tokens < s.quotaTokens ? 'short' : 'complete';
  return { ...s, tokens, shards, tokenizers, state, damage: null };
}

/**
 * One line per problem, each with the folder and the fix; `prepCommand` is the prep-mixture command line that
 * builds the flow in `flowDir`. Sources whose manifests name different tokenizers are one problem too (the loader
 * would refuse all but the model's).
 */
export function flowProblems(
  statuses: SourceStatus[],
  { flowDir, prepCommand }: { flowDir: string; prepCommand: string },
): string[] {
  const n = (x: number) => x.toLocaleString('en-US');
  const problems = statuses.flatMap((s) => {
    const name = `stage ${s.stage}, source ${s.plan.id}`;
    switch (s.state) {
      case 'complete':
        return [];
      case 'missing':
        return [dataProblem(`${name}: no shards`, s.dir, `run \`${prepCommand}\` (it preps what is missing)`)];
      case 'unfinished':
        return [dataProblem(`${name}: its prep was interrupted`, s.dir, `run \`${prepCommand}\` to finish it`)];
      case 'damaged':
        return [s.damage!];
      case 'short':
        return [
          dataProblem(
            `${name}: ${n(s.tokens)} tokens, the plan reads ${n(s.quotaTokens)} (${n(s.plan.quota_sequences)} sequences)`,
            s.dir,
            'give the source more input and rerun prep-mixture with --force, or let training wrap it',
          ),
        ];
    }
  });
  const tokenizers = [...new Set(statuses.flatMap((s) => s.tokenizers))];
  if (tokenizers.length > 1) {
    const by = tokenizers.map(
      (t) =>
        `${t}: ${statuses
          .filter((s) => s.tokenizers.includes(t))
          .map((s) => `${s.stage}/${s.plan.id}`)
          .join(', ')}`,
    );
    problems.push(
      dataProblem(
        `the sources were prepared with different tokenizers (${by.join('; ')})`,
        flowDir,
        'rerun prep-mixture with one --tokenizer and --force',
      ),
    );
  }
  return problems;
}
