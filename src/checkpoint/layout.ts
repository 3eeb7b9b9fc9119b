/**
 * Checkpoint directory layout (inventory §7.1, safetensors and JSON instead of pickles):
 *
 *   {checkpoint_dir}/latest_checkpointed_iteration.txt   newest complete step; written last
 *   {checkpoint_dir}/iter_NNNNNNN/dense.safetensors      rank 0: every non-expert weight and buffer (router bias)
 *   {checkpoint_dir}/iter_NNNNNNN/rank_RRR.safetensors   every rank: its experts and its optimizer shard
 *   {checkpoint_dir}/iter_NNNNNNN/train_state.json       rank 0: step, tokens, loader, RNG, fingerprint, versions
 *   {checkpoint_dir}/iter_NNNNNNN/manifest.json          rank 0, once every file above is in
 *
 * A step directory is complete when its manifest parses and every file it lists exists with the size it records;
 * anything else (a process killed mid-write) is incomplete and is never loaded.
 */
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

export const TRACKER = 'latest_checkpointed_iteration.txt';
export const DENSE_FILE = 'dense.safetensors';
export const STATE_FILE = 'train_state.json';
export const MANIFEST = 'manifest.json';

export const iterName = (step: number): string => `iter_${String(step).padStart(7, '0')}`;
export const rankFile = (rank: number): string => `rank_${String(rank).padStart(3, '0')}.safetensors`;

/** The files a complete step holds for a run of `world` ranks. */
export const expectedFiles = (world: number): string[] => [DENSE_FILE, STATE_FILE, ...Array.from({ length: world }, (_, r) => rankFile(r))];

export interface Manifest {
  step: number;
  world: number;
  dp_count: number;
  bytes_total: number;
  git_sha: string | null;
  nmoe_version: string;
  files: string[];
  /** Size of each file, bytes: resume checks them. */
  bytes: Record<string, number>;
}

export interface StepDir {
  step: number;
  dir: string;
  complete: boolean;
  manifest: Manifest | null;
  /** Why an incomplete step is incomplete. */
  problem?: string;
}

function checkStep(dir: string): { manifest: Manifest | null; problem?: string } {
  const path = join(dir, MANIFEST);
  if (!existsSync(path)) return { manifest: null, problem: 'no manifest.json (the save did not finish)' };
  let manifest: Manifest;
  try {
    manifest = JSON.parse(readFileSync(path, 'utf8')) as Manifest;
  } catch (err) {
    return { manifest: null, problem: `manifest.json does not parse (${(err as Error).message})` };
  }
  for (const f of manifest.files ?? []) {
    const p = join(dir, f);
    if (!existsSync(p)) return { manifest, problem: `${f} is missing` };
    const size = statSync(p).size;
    if (size !== manifest.bytes?.[f]) return { manifest, problem: `${f} is ${size} bytes, the manifest says ${manifest.bytes?.[f]}` };
  }
  return { manifest };
}

/** Every `iter_*` directory under `base`, newest first, with its completeness. */
export function listSteps(base: string): StepDir[] {
  if (!existsSync(base)) return [];
  return readdirSync(base, { withFileTypes: true })
    .filter((e) => e.isDirectory() && /^iter_\d{7,}$/.test(e.name))
    .map((e) => {
      const dir = join(base, e.name);
      const { manifest, problem } = checkStep(dir);
      return { step: Number(e.name.slice(5)), dir, complete: problem === undefined, manifest, ...(problem ? { problem } : {}) };
    })
    .sort((a, b) => b.step - a.step);
}

/** The newest complete step under `base`, warning about each newer incomplete one (never loaded). */
export function latestComplete(base: string, warn: (message: string) => void): StepDir | null {
  for (const s of listSteps(base)) {
    if (s.complete) return s;
    warn(`skipping incomplete checkpoint ${s.dir}: ${s.problem}`);
  }
  return null;
}
