/**
 * Checkpoint directory layout: the reference's split (replicated dense state from rank 0, one file per rank, a
 * manifest, the tracker written last), with safetensors and JSON instead of its rd.pt / dp_rank_RRR.pt pickles:
 *
 *   {checkpoint_dir}/latest_checkpointed_iteration.txt   newest complete step; written last
 *   {checkpoint_dir}/iter_NNNNNNN/dense.safetensors      rank 0: every non-expert weight and buffer (router bias)
 *   {checkpoint_dir}/iter_NNNNNNN/rank_RRR.safetensors   every rank: its experts and its optimizer shard
 *   {checkpoint_dir}/iter_NNNNNNN/train_state.json       rank 0: step, tokens, loader, RNG, fingerprint, versions
 *   {checkpoint_dir}/iter_NNNNNNN/manifest.json          rank 0, once every file above is in
 *
 * A step directory is complete when its manifest parses and every file it lists exists with the size it records;
 * anything else (a process killed mid-write) is incomplete and is never loaded. The manifest also records each
 * file's SHA-256, which resume and `nmoe ckpt info --verify` check (damage that keeps the size).
 *
 * A step directory nmoe did not write (the reference trainer's `iter_*`, whose manifest records no sizes, or one
 * holding files nmoe never writes) is foreign: never loaded, deleted or written into; a run moves it aside
 * (previous-run.ts).
 */
import { createHash } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync, readSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

export const TRACKER = 'latest_checkpointed_iteration.txt';
export const DENSE_FILE = 'dense.safetensors';
export const STATE_FILE = 'train_state.json';
export const MANIFEST = 'manifest.json';

export const iterName = (step: number): string => `iter_${String(step).padStart(7, '0')}`;
export const rankFile = (rank: number): string => `rank_${String(rank).padStart(3, '0')}.safetensors`;
/** Where rank r > 0 leaves its file's SHA-256 for rank 0's manifest (removed once the manifest is written). */
export const checksumFile = (rank: number): string => `${rankFile(rank)}.sha256`;

/** The files a complete step holds for a run of `world` ranks. */
export const expectedFiles = (world: number): string[] => [
  DENSE_FILE,
  STATE_FILE,
  ...Array.from({ length: world }, (_, r) => rankFile(r)),
];

/** Every name nmoe writes into a step directory, temporary files included. */
const isOwnName = (name: string): boolean =>
  name === DENSE_FILE ||
  name === STATE_FILE ||
  name === MANIFEST ||
  /^rank_\d{3,}\.safetensors(\.sha256)?$/.test(name) ||
  /^\..+\.tmp-/.test(name);

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
  /** SHA-256 of each file, hex (absent in steps written before nmoe recorded them). */
  sha256?: Record<string, string>;
}

export interface StepDir {
  step: number;
  dir: string;
  complete: boolean;
  manifest: Manifest | null;
  /** Why an incomplete step is incomplete. */
  problem?: string;
  /** Not written by nmoe (see above): problem says why. */
  foreign: boolean;
}

function checkStep(dir: string): { manifest: Manifest | null; problem?: string; foreign: boolean } {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (err) {
    return { manifest: null, problem: `cannot be read (${(err as NodeJS.ErrnoException).code})`, foreign: true };
  }
  const strange = names.filter((n) => !isOwnName(n));
  if (strange.length)
    return {
      manifest: null,
      problem: `holds ${strange.slice(0, 3).join(', ')}${strange.length > 3 ? ', …' : ''}, which nmoe never writes`,
      foreign: true,
    };
  if (!names.includes(MANIFEST))
    return { manifest: null, problem: 'no manifest.json (the save did not finish)', foreign: false };
  let manifest: Manifest;
  try {
    manifest = JSON.parse(readFileSync(join(dir, MANIFEST), 'utf8')) as Manifest;
  } catch (err) {
    // nmoe renames its manifest in whole, so one that does not parse came from elsewhere.
    return { manifest: null, problem: `manifest.json does not parse (${(err as Error).message})`, foreign: true };
  }
  if (
    typeof manifest !== 'object' ||
    manifest === null ||
    typeof manifest.bytes !== 'object' ||
    !Array.isArray(manifest.files)
  ) {
    return {
      manifest: null,
      problem:
        "its manifest.json records no file sizes, so nmoe did not write it (the reference trainer's steps look like this)",
      foreign: true,
    };
  }
  for (const f of manifest.files) {
    const p = join(dir, f);
    if (!existsSync(p)) return { manifest, problem: `${f} is missing`, foreign: false };
    const size = statSync(p).size;
    if (size !== manifest.bytes[f])
      return { manifest, problem: `${f} is ${size} bytes, the manifest says ${manifest.bytes[f]}`, foreign: false };
  }
  return { manifest, foreign: false };
}

/** Whether `dir` holds a step nmoe did not write (a missing or empty folder is nmoe's to fill). */
export const isForeignStep = (dir: string): boolean => existsSync(dir) && checkStep(dir).foreign;

/** Every `iter_*` directory under `base`, newest first, with its completeness. */
export function listSteps(base: string): StepDir[] {
  if (!existsSync(base)) return [];
  return readdirSync(base, { withFileTypes: true })
    .filter((e) => e.isDirectory() && /^iter_\d{7,}$/.test(e.name))
    .map((e) => {
      const dir = join(base, e.name);
      const { manifest, problem, foreign } = checkStep(dir);
      return {
        step: Number(e.name.slice(5)),
        dir,
        complete: problem === undefined,
        manifest,
        foreign,
        ...(problem ? { problem } : {}),
      };
    })
    .sort((a, b) => b.step - a.step);
}

/** The newest complete step under `base`, warning about each newer incomplete one of nmoe's (never loaded). */
export function latestComplete(base: string, warn: (message: string) => void): StepDir | null {
  for (const s of listSteps(base)) {
    if (s.complete) return s;
    warn(`skipping ${s.foreign ? 'a checkpoint nmoe did not write' : 'incomplete checkpoint'} ${s.dir}: ${s.problem}`);
  }
  return null;
}

/** SHA-256 of a file, hex, read in 8 MiB pieces. */
export function sha256File(path: string): string {
  const hash = createHash('sha256');
  const buf = Buffer.allocUnsafe(8 << 20);
  const fd = openSync(path, 'r');
  try {
    for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0;) hash.update(buf.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return hash.digest('hex');
}

/** The files among `files` of a complete step whose bytes differ from the SHA-256 its manifest records, one line each. */
export function checksumProblems(s: StepDir, files: readonly string[] = s.manifest?.files ?? []): string[] {
  const sums = s.manifest?.sha256;
  if (!sums) return [];
  return files.flatMap((f) => {
    const actual = sha256File(join(s.dir, f));
    return actual === sums[f]
      ? []
      : [
          `${f} does not match its checksum (sha256 ${actual.slice(0, 16)}…, the manifest records ${String(sums[f]).slice(0, 16)}…)`,
        ];
  });
}
