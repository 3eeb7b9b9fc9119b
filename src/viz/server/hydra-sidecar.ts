/**
 * A HYDRA sidecar (the JSONL `nmoe data hydra grade` writes, one Grade a line: eval/hydra/sidecar.ts) summed up for
 * the dashboard: decisions counted and the aggregated and probe scores binned over [0, 1]. The file is read line by
 * line, so a sidecar of millions of documents costs one line of memory. The last line, when it is not a grade, is
 * taken for a grade still writing (it appends batch by batch) and left out; any other line that is not a grade is a
 * 422 naming it.
 */
import { createReadStream, statSync } from 'node:fs';
import { createInterface } from 'node:readline';
import type { HydraSidecarResponse } from '../api.ts';
import type { Grade } from '../../eval/hydra/grader.ts';
import type { Decision } from '../../eval/hydra/rule.ts';
import { UserError } from '../../util/errors.ts';
import { badRequest } from './errors.ts';
import { canonical } from './datasets.ts';
import { confine } from './paths.ts';

const DECISIONS: readonly Decision[] = ['keep', 'band', 'drop'];

const isUnit = (x: unknown): x is number => typeof x === 'number' && x >= 0 && x <= 1;

/** Why `row` is not a Grade, or null if it is one. */
function gradeProblem(row: unknown): string | null {
  if (typeof row !== 'object' || row === null) return 'is not a JSON object';
  const g = row as Partial<Record<keyof Grade, unknown>>;
  if (typeof g.id !== 'string') return 'has no string "id"';
  if (!DECISIONS.includes(g.decision as Decision))
    return `has decision ${JSON.stringify(g.decision)}, not keep, band or drop`;
  if (!isUnit(g.probe)) return `has probe ${JSON.stringify(g.probe)}, not a score in [0, 1]`;
  if (g.aggregated !== null && !isUnit(g.aggregated))
    return `has aggregated ${JSON.stringify(g.aggregated)}, neither null nor a score in [0, 1]`;
  return null;
}

const bin = (x: number, bins: number) => Math.min(bins - 1, Math.floor(x * bins));

export async function hydraSidecar(root: string, rel: string, bins: number): Promise<HydraSidecarResponse> {
  const file = confine(root, rel, 'path');
  if (!rel.endsWith('.jsonl') || !statSync(file).isFile())
    throw badRequest(
      `path=${JSON.stringify(rel)} is not a HYDRA sidecar: \`nmoe data hydra grade\` writes a .jsonl file`,
    );
  const out: HydraSidecarResponse = {
    path: canonical(rel),
    documents: 0,
    decisions: { keep: 0, band: 0, drop: 0 },
    early_drops: 0,
    aggregated: { bins, counts: new Array<number>(bins).fill(0) },
    probe: { bins, counts: new Array<number>(bins).fill(0) },
  };
  // A bad line is reported once the next one shows it was not the last (a write in progress).
  let pending: string | null = null;
  let n = 0;
  const input = createReadStream(file);
  try {
    for await (const line of createInterface({ input, crlfDelay: Infinity })) {
      n++;
      if (line.trim() === '') continue;
      if (pending) throw new UserError(pending);
      let row: unknown;
      let problem: string | null;
      try {
        row = JSON.parse(line);
        problem = gradeProblem(row);
      } catch {
        problem = 'is not JSON';
      }
      if (problem) {
        pending = `${rel}:${n} ${problem}: not a line of a HYDRA sidecar. Fix: open a file written by \`nmoe data hydra grade\`.`;
        continue;
      }
      const g = row as Grade;
      out.documents++;
      out.decisions[g.decision]++;
      out.probe.counts[bin(g.probe, bins)]!++;
      if (g.aggregated === null) out.early_drops++;
      else out.aggregated.counts[bin(g.aggregated, bins)]!++;
    }
  } finally {
    input.destroy(); // also when a bad line ends the read early
  }
  return out;
}
