/**
 * Data fixtures for the dashboard's datasets page: a flow over JSONL made here, built by the real `nmoe data
 * prep-mixture`, and a HYDRA sidecar in `nmoe data hydra grade`'s exact format (eval/hydra/grader.ts's Grade), with
 * known decisions and scores.
 */
import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Grade } from '../../src/eval/hydra/grader.ts';
import { RUBRIC, type Decision } from '../../src/eval/hydra/rule.ts';
import { embeddedDocuments } from '../../src/data/embedded-corpus.ts';
import { writeJsonl } from '../fixtures/data/helpers.ts';

export const FLOW_SEQ_LEN = 32;

export interface FlowFixture {
  mixtureToml: string;
  flowProfilesToml: string;
  /** The arguments of `nmoe data prep-mixture` that build `flow` into `dataRoot`. */
  prepArgs(flow: string, dataRoot: string): string[];
}

/**
 * One stage (pretrain) of two sources, web (weight 0.75) and code (0.25), each two of Moby Dick's chapters in
 * `dir/raw`; flow `tiny` asks 512 tokens of the stage (16 sequences of 32), which the inputs hold, and flow `huge`
 * a million, which they do not.
 */
export function flowFixture(dir: string): FlowFixture {
  const chapters = embeddedDocuments();
  mkdirSync(join(dir, 'raw'), { recursive: true });
  const sources = { web: 0.75, code: 0.25 };
  let mixture = '[mixtures.web_code]\ntotal_tokens_b = 1.0\n';
  for (const [s, [id, weight]] of Object.entries(sources).entries()) {
    writeJsonl(
      join(dir, 'raw', `${id}.jsonl`),
      chapters.slice(2 * s, 2 * s + 2).map((text, c) => ({ id: `${id}-${c}`, text })),
    );
    mixture += `[[mixtures.web_code.sources]]\nid = "${id}"\ntokens_b = ${weight}\npaths = ["raw/${id}.jsonl"]\n`;
  }
  const flow = (name: string, scale: number) =>
    `[flow.${name}]\nmode = "dev"\nstages = ["pretrain"]\nscale = ${scale}\n[flow.${name}.mixture]\npretrain = "web_code"\n`;
  const mixtureToml = join(dir, 'mix.toml');
  const flowProfilesToml = join(dir, 'flows.toml');
  writeFileSync(mixtureToml, mixture);
  writeFileSync(flowProfilesToml, flow('tiny', 0.000000512) + flow('huge', 0.001));
  return {
    mixtureToml,
    flowProfilesToml,
    prepArgs: (name, dataRoot) => [
      'data',
      'prep-mixture',
      mixtureToml,
      flowProfilesToml,
      '--flow',
      name,
      '-o',
      dataRoot,
      '--seq-len',
      String(FLOW_SEQ_LEN),
      '--tokenizer',
      'bytes',
      '--num-shards',
      '1',
      '-j',
      '1',
    ],
  };
}

function grade(id: string, probe: number, aggregated: number | null, decision: Decision): Grade {
  const scores = aggregated === null ? null : Object.fromEntries(RUBRIC.map((d) => [d, 4 * aggregated]));
  return { id, probe, scores: scores as Grade['scores'], aggregated, decision };
}

/**
 * Ten grades under the default calibration (tau_drop 0.3, tau_keep 0.5): 4 kept (aggregated 0.8 three times, 1.0),
 * 2 banded (0.4), 1 dropped by the judge (0.1) and 3 dropped early by the probe (0.1, 0.2, 0.25).
 */
export const SIDECAR_GRADES: readonly Grade[] = [
  grade('d0', 0.9, 0.8, 'keep'),
  grade('d1', 0.9, 0.8, 'keep'),
  grade('d2', 0.95, 0.8, 'keep'),
  grade('d3', 0.99, 1.0, 'keep'),
  grade('d4', 0.7, 0.4, 'band'),
  grade('d5', 0.6, 0.4, 'band'),
  grade('d6', 0.5, 0.1, 'drop'),
  grade('d7', 0.1, null, 'drop'),
  grade('d8', 0.2, null, 'drop'),
  grade('d9', 0.25, null, 'drop'),
];

/** SIDECAR_GRADES as `grade` writes them, then half a line: a grade still writing its next batch. */
export function writeSidecar(file: string): void {
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, SIDECAR_GRADES.map((g) => `${JSON.stringify(g)}\n`).join(''));
  appendFileSync(file, JSON.stringify(grade('d10', 0.5, 0.5, 'keep')).slice(0, 20));
}
