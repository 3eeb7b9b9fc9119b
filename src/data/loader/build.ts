/**
 * The trainer's data: `createLoader(cfg, rank, world)` builds the deterministic loader for one of three inputs.
 * Direct mode (`data_path`, no `flow_mode`): every .npy below data_path in sorted order, one source whose quota is
 * steps x batch_size sequences. Flow mode (`flow_mode`): the plan from mixture_toml + flow_profiles_toml, each
 * source's shards under `<data_root>/flows/<flow>/<stage>/<source>/train/` (the reference's layout); `steps <= 0`
 * takes the step count from the flow budget (the loader's `steps`), as the reference does. Neither: the
 * embedded Moby-Dick corpus (bytes tokenizer). Before training starts, every shard's header and size is checked,
 * manifests must match the model's tokenizer, vocabulary and EOS, every shard a manifest lists must be there with
 * its listed token count (the loader reads the .npy files it finds, so a lost shard would otherwise just shrink the
 * data), and too little data warns (or, with `strict_data = true`, fails).
 */
import { createHash } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { basename, dirname, relative, resolve } from 'node:path';
import type { LoaderConfig, ValidationConfig } from '../../config/sections.ts';
import { UserError } from '../../util/errors.ts';
import { embeddedTokens } from '../embedded-corpus.ts';
import { dataError, type Warn, warnToStderr } from '../errors.ts';
import { readManifest } from '../manifest.ts';
import { MemoryTokens, NpyShard, type TokenFile } from '../shard.ts';
import { expandPaths, listFiles } from '../sources/paths.ts';
import { DeterministicLoader, type LoaderStage } from './loader.ts';
import { flowSourceDir, resolvePlan, sourceTokenQuota } from './mixture.ts';
import { TokenStream } from './stream.ts';

const PREFETCH_STEPS = 2;

const shardFix = (manifest: string) =>
  `restore it, or re-run the \`nmoe data prep\` that wrote the data; \`nmoe data verify ${manifest} --checksums\` lists every missing or damaged shard`;

/**
 * Every manifest.json below `dir` must describe data for this model, and every shard it lists must exist. Returns
 * the token count each manifest lists, by absolute shard path, with the manifest that lists it.
 */
function checkManifests(dir: string, cfg: LoaderConfig): Map<string, { tokens: number; manifest: string }> {
  const listed = new Map<string, { tokens: number; manifest: string }>();
  for (const path of listFiles(dir).filter((p) => basename(p) === 'manifest.json')) {
    const m = readManifest(path);
    const diffs = (
      [
        ['tokenizer', m.tokenizer, cfg.tokenizer],
        ['vocab_size', m.vocab_size, cfg.vocab_size],
        ['eos_token_id', m.eos_token_id, cfg.eos_token_id],
      ] as const
    ).filter(([, data, model]) => data !== model);
    if (diffs.length > 0) {
      throw dataError(
        `the data was prepared for ${diffs.map(([k, d]) => `${k} = ${JSON.stringify(d)}`).join(', ')}, the model config has ` +
          diffs.map(([k, , c]) => `${k} = ${JSON.stringify(c)}`).join(', '),
        path,
        `set ${diffs.map(([k, d]) => `${k} = ${JSON.stringify(d)}`).join(', ')} in the config, or re-prepare the data with \`nmoe data prep --tokenizer ${cfg.tokenizer}\``,
      );
    }
    for (const s of m.shards) {
      const shard = resolve(dirname(path), s.path);
      if (!existsSync(shard)) throw dataError(`a shard listed in ${path} is missing`, shard, shardFix(path));
      listed.set(shard, { tokens: s.num_tokens, manifest: path });
    }
  }
  return listed;
}

function openShards(dir: string, option: string, cfg: LoaderConfig): TokenFile[] {
  const prepFix =
    option === 'data_path'
      ? 'point data_path at the output folder of `nmoe data prep`'
      : `build the flow with \`nmoe data prep-mixture ${cfg.mixture_toml} ${cfg.flow_profiles_toml} --flow ${cfg.flow_mode} ` +
        `-o ${cfg.data_root} --seq-len ${cfg.seq_len}\`, or prepare this source with \`nmoe data prep ... -o ${dir}\``;
  if (!existsSync(dir) || !statSync(dir).isDirectory())
    throw dataError(`${option} folder does not exist`, dir, prepFix);
  const listed = checkManifests(dir, cfg);
  const shards = expandPaths([dir], ['.npy'], option).map((p) => NpyShard.open(p));
  const refuse = (err: Error) => {
    for (const s of shards) s.close();
    return err;
  };
  for (const shard of shards) {
    const want = listed.get(resolve(shard.path));
    if (want && want.tokens !== shard.length) {
      throw refuse(
        dataError(
          `shard holds ${shard.length} tokens, but ${want.manifest} lists ${want.tokens}`,
          shard.path,
          shardFix(want.manifest),
        ),
      );
    }
  }
  if (shards.every((s) => s.length === 0)) {
    throw refuse(
      dataError(`${option} folder holds no tokens: its ${shards.length} .npy file(s) are all empty`, dir, prepFix),
    );
  }
  return shards;
}

/** Warns (or with strict_data fails) when `have` tokens cannot give `need` without repeating. */
function checkEnough(what: string, have: number, need: number, cfg: LoaderConfig, warn: Warn): void {
  if (have >= need) return;
  const msg = `${what} holds ${have.toLocaleString('en-US')} tokens, but the run needs ${need.toLocaleString('en-US')}`;
  if (cfg.strict_data)
    throw new UserError(
      `${msg} (strict_data = true). Fix: prepare more data, lower steps or batch_size, or set strict_data = false to wrap.`,
    );
  warn(
    `${msg}: the data will wrap about ${(need / Math.max(have, 1)).toFixed(1)}x (strict_data = true makes this an error)`,
  );
}

function planHashOf(files: TokenFile[], base: string): string {
  return createHash('sha256')
    .update(JSON.stringify(files.map((f) => [relative(base, f.path), f.length])))
    .digest('hex');
}

function directStage(cfg: LoaderConfig, files: TokenFile[], warn: Warn, what: string): LoaderStage {
  const stream = new TokenStream('data_path', files);
  const windowTokens = cfg.seq_len + 1;
  if (stream.totalTokens < windowTokens) {
    throw dataError(
      `${what} holds ${stream.totalTokens} tokens, fewer than one window of seq_len + 1 = ${windowTokens}`,
      files[0]!.path,
      'use more data or a shorter seq_len',
    );
  }
  checkEnough(what, stream.totalTokens, cfg.steps * cfg.batch_size * windowTokens, cfg, warn);
  return {
    stage_id: 'pretrain',
    sources: [{ id: 'data_path', weight_fp: 1, quota_sequences: cfg.steps * cfg.batch_size, stream }],
  };
}

function flowStages(cfg: LoaderConfig, warn: Warn): { stages: LoaderStage[]; planHash: string; steps: number } {
  if (!cfg.mixture_toml || !cfg.flow_profiles_toml) {
    throw new UserError(
      `flow_mode = "${cfg.flow_mode}" needs mixture_toml and flow_profiles_toml. Fix: set both in the config (or remove flow_mode and set data_path).`,
    );
  }
  const plan = resolvePlan({
    mixtureToml: cfg.mixture_toml,
    flowProfilesToml: cfg.flow_profiles_toml,
    flow: cfg.flow_mode!,
    seqLen: cfg.seq_len,
    activeParamsB: cfg.active_params_b,
  });
  const flowTokens = Math.trunc(plan.stages.reduce((n, s) => n + s.total_tokens_b, 0) * 1e9);
  const perStep = cfg.batch_size * cfg.seq_len;
  const steps = cfg.steps > 0 ? cfg.steps : Math.floor(flowTokens / perStep);
  if (cfg.steps <= 0) {
    if (steps === 0)
      throw new UserError(
        `flow "${cfg.flow_mode}" has ${flowTokens} tokens, less than one step (${perStep}). Fix: give steps, or a larger flow.`,
      );
    const n = (x: number) => x.toLocaleString('en-US');
    warn(`steps derived from flow ${cfg.flow_mode}: ${n(steps)} (${n(flowTokens)} tokens / ${n(perStep)} per step)`);
  } else {
    checkEnough(`flow ${cfg.flow_mode}`, flowTokens, cfg.steps * perStep, cfg, warn);
  }
  const stages = plan.stages.map((st) => ({
    stage_id: st.stage_id,
    sources: st.sources.map((sp) => {
      const dir = flowSourceDir(cfg.data_root, cfg.flow_mode!, st.stage_id, sp.id);
      const stream = new TokenStream(sp.id, openShards(dir, `source ${sp.id} (stage ${st.stage_id})`, cfg));
      const need = sourceTokenQuota(sp, cfg.seq_len);
      checkEnough(`source ${sp.id} of stage ${st.stage_id} (${dir})`, stream.totalTokens, need, cfg, warn);
      return { id: sp.id, weight_fp: sp.weight_fp, quota_sequences: sp.quota_sequences, stream };
    }),
  }));
  return { stages, planHash: plan.plan_hash, steps };
}

export interface CreateOptions {
  warn?: Warn;
  /** Steps read ahead in the background from shards (default 2). */
  prefetch?: number;
}

/**
 * The loader for a config; rank/world select this rank's slice of every global batch. Its `steps` are the run's:
 * the config's, or with flow mode and steps <= 0 those the flow budget gives.
 */
export function createLoader(cfg: LoaderConfig, rank = 0, world = 1, opts: CreateOptions = {}): DeterministicLoader {
  const warn = opts.warn ?? warnToStderr;
  const prefetch = opts.prefetch ?? PREFETCH_STEPS;
  const common = {
    seqLen: cfg.seq_len,
    globalBatch: cfg.batch_size,
    steps: cfg.steps,
    rank,
    world,
    vocabSize: cfg.vocab_size,
    warn,
  };
  if (cfg.flow_mode !== null) {
    const { stages, planHash, steps } = flowStages(cfg, warn);
    return new DeterministicLoader(stages, { ...common, steps, planHash, prefetch });
  }
  if (cfg.data_path !== null) {
    const files = openShards(cfg.data_path, 'data_path', cfg);
    const stage = directStage(cfg, files, warn, `data_path ${cfg.data_path}`);
    return new DeterministicLoader([stage], { ...common, planHash: planHashOf(files, cfg.data_path), prefetch });
  }
  if (cfg.tokenizer !== 'bytes') {
    throw new UserError(
      `tokenizer = "${cfg.tokenizer}" needs prepared token shards (data_path), but none is set; the embedded corpus is byte-level. ` +
        'Fix: set tokenizer = "bytes", vocab_size = 256, eos_token_id = 0, or point data_path at shards.',
    );
  }
  const files = [new MemoryTokens('embedded corpus (Moby Dick)', embeddedTokens())];
  const stage = directStage(cfg, files, warn, 'the embedded corpus');
  return new DeterministicLoader([stage], { ...common, planHash: 'embedded', prefetch: 0 });
}

/**
 * The held-out data of `validation_data_path` (shards as data_path takes them): a factory for a fresh loader that
 * delivers the same first `validation_steps` global batches every time, this rank's slice of each.
 */
export function validationLoaders(
  cfg: LoaderConfig & Pick<ValidationConfig, 'validation_data_path' | 'validation_steps'>,
  rank = 0,
  world = 1,
  opts: CreateOptions = {},
): () => DeterministicLoader {
  const warn = opts.warn ?? warnToStderr;
  const path = cfg.validation_data_path!;
  const files = openShards(path, 'validation_data_path', cfg);
  const stage = directStage({ ...cfg, steps: cfg.validation_steps }, files, warn, `validation_data_path ${path}`);
  const common = {
    seqLen: cfg.seq_len,
    globalBatch: cfg.batch_size,
    steps: cfg.validation_steps,
    rank,
    world,
    vocabSize: cfg.vocab_size,
    warn,
    planHash: planHashOf(files, path),
    prefetch: 0,
  };
  return () => new DeterministicLoader([stage], common);
}
