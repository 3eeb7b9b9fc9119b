/**
 * The flow commands of `nmoe data`: prep-mixture (build a flow tree from a mixture TOML and raw inputs),
 * merge-manifests (one manifest over several prep outputs), and flow show|verify (the resolved plan with its
 * plan_hash, quotas and tokens on disk; what is missing or short). The work lives in src/data/flow; this file parses
 * flags and prints. `flow verify` exits 2 when the flow is incomplete, after listing every problem, as `data verify`
 * does for damaged shards.
 */
import { CommanderError, type Command } from 'commander';
import pc from 'picocolors';
import { defaultConfig } from '../config/schema.ts';
import { DEFAULT_FLOW_SEQ_LEN, type FlowRef, resolveFlow } from '../data/flow/plan.ts';
import { type MixturePrepSettings, planMixturePrep, runMixturePrep } from '../data/flow/prep-mixture.ts';
import { type SourceStatus, flowProblems, sourceStatus } from '../data/flow/status.ts';
import { mergeManifests } from '../data/merge-manifests.ts';
import { PREP_DEFAULTS } from '../data/prep/options.ts';
import { prepReport } from '../data/prep/report.ts';
import { type FilterFlags, filtersFrom } from './filter-flags.ts';
import { numberOption } from './flags.ts';
import { addPrepSettings, count, prepProgress } from './prep-flags.ts';
import { Progress, onInterrupt } from './progress.ts';

interface FlowFlags {
  flow: string;
  seqLen: number;
  activeParamsB?: number;
}

const n = (x: number) => x.toLocaleString('en-US');

/** `cmd` with the two TOMLs and the flags that fix a plan. */
function flowArguments(cmd: Command): Command {
  return cmd
    .argument('<mixture.toml>', 'the mixture TOML ([mixtures.<id>] with their [[sources]])')
    .argument('<flow_profiles.toml>', 'the flow profiles TOML ([flow.<name>])')
    .requiredOption('--flow <name>', "the flow: its [flow.<name>] table, the training config's flow_mode")
    .option(
      '--seq-len <n>',
      "the training config's seq_len (quotas are in sequences, so the plan depends on it)",
      count(1),
      DEFAULT_FLOW_SEQ_LEN,
    )
    .option(
      '--active-params-b <x>',
      "the training config's active_params_b, for flows that set tokens_b_ratio",
      numberOption('--active-params-b', 0, 1e6, 2),
    );
}

function flowRef(mixtureToml: string, flowProfilesToml: string, o: FlowFlags, dataRoot: string): FlowRef {
  return {
    mixtureToml,
    flowProfilesToml,
    flow: o.flow,
    dataRoot,
    seqLen: o.seqLen,
    activeParamsB: o.activeParamsB ?? null,
  };
}

/** The prep-mixture command line that builds `ref`, for the fixes of `flow verify`. */
function prepCommand(ref: FlowRef): string {
  const seq = ref.seqLen === DEFAULT_FLOW_SEQ_LEN ? '' : ` --seq-len ${ref.seqLen}`;
  const active = ref.activeParamsB === null ? '' : ` --active-params-b ${ref.activeParamsB}`;
  return `nmoe data prep-mixture ${ref.mixtureToml} ${ref.flowProfilesToml} --flow ${ref.flow} -o ${ref.dataRoot}${seq}${active}`;
}

function registerPrepMixture(data: Command): void {
  const cmd = flowArguments(
    data
      .command('prep-mixture')
      .description(
        "Prep every source of every stage of a flow into <data_root>/flows/<flow>/<stage>/<source>/train, each to the tokens the loader's plan reads from it; resumable.",
      ),
  ).option('-o, --output <data_root>', "the training config's data_root", defaultConfig().data_root);
  addPrepSettings(cmd)
    .addHelpText(
      'after',
      '\nEach [[mixtures.<id>.sources]] table names its input: paths = [...] (files, folders or globs, relative to the\n' +
        'mixture TOML) with format = "jsonl" (default), "jsonl_zst", "parquet" or "text"; or hf_dataset, hf_subset,\n' +
        "hf_split (the Hugging Face Hub). text_field and id_field as prep's flags.\n\n" +
        'Example:\n  nmoe data prep-mixture mix.toml flows.toml --flow dev -o /data --seq-len 4096',
    )
    .action(
      async (
        mixture: string,
        flows: string,
        opts: FlowFlags & Omit<MixturePrepSettings, 'filters'> & FilterFlags & { output: string },
      ) => {
        const { flow, seqLen, activeParamsB, output, ...rest } = opts;
        const ref = flowRef(mixture, flows, { flow, seqLen, activeParamsB }, output);
        const settings: MixturePrepSettings = { ...PREP_DEFAULTS, ...rest, filters: filtersFrom(opts) };
        const jobs = planMixturePrep(ref, settings);
        const progress = new Progress();
        const interrupt = onInterrupt(
          progress,
          'interrupted: saving a checkpoint (Ctrl-C again to exit now; the next run resumes from the last checkpoint)',
        );
        let t0 = performance.now();
        let onProgress = prepProgress(progress);
        try {
          const { interrupted } = await runMixturePrep(jobs, {
            signal: interrupt.signal,
            progress: (p) => onProgress(p),
            start: (job, i, count) => {
              const label = `[${i + 1}/${count}] ${job.stage}/${job.plan.id}`;
              progress.line(
                `${label}: ${n(job.quotaTokens)} tokens (${n(job.plan.quota_sequences)} sequences of ${ref.seqLen} + 1) -> ${job.dir}`,
              );
              onProgress = prepProgress(progress, label);
              t0 = performance.now();
            },
            done: (job, r) => {
              progress.finish();
              for (const line of prepReport(r, job.options, (performance.now() - t0) / 1000))
                progress.line(`  ${line}`);
            },
          });
          if (interrupted) throw new CommanderError(130, 'nmoe.interrupted', 'interrupted');
        } finally {
          progress.finish();
          interrupt.dispose();
        }
        const where = `${ref.dataRoot}/flows/${ref.flow}`;
        if (settings.numWorkers > 1) {
          progress.line(
            `flow ${ref.flow}: worker ${settings.workerIndex} of ${settings.numWorkers} done -> ${where}; \`nmoe data flow verify\` checks the flow once every worker has finished`,
          );
          return;
        }
        const statuses = jobs.map(sourceStatus);
        const incomplete = statuses.filter((s) => s.state !== 'complete');
        for (const s of incomplete) {
          progress.line(
            pc.yellow(
              `warning: ${s.stage}/${s.plan.id} holds ${n(s.tokens)} of its ${n(s.quotaTokens)} tokens: its input ran out, so training wraps it`,
            ),
          );
        }
        progress.line(
          `flow ${ref.flow}: ${statuses.length - incomplete.length} of ${statuses.length} sources complete -> ${where}`,
        );
      },
    );
}

function statusRows(statuses: SourceStatus[]): string[] {
  const header = ['source', 'weight', 'sequences', 'tokens', 'on disk', 'state'];
  const rows = statuses.map((s) => [
    s.plan.id,
    `${((s.plan.weight_fp / 1e6) * 100).toFixed(2)}%`,
    n(s.plan.quota_sequences),
    n(s.quotaTokens),
    n(s.tokens),
    s.state + (s.tokenizers.length > 0 ? ` (${s.tokenizers.join(', ')})` : ''),
  ]);
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c]!.length)));
  return [header, ...rows].map((r) =>
    `  ${r.map((x, c) => (c === 0 || c === 5 ? x.padEnd(widths[c]!) : x.padStart(widths[c]!))).join('  ')}`.trimEnd(),
  );
}

function registerFlow(data: Command): void {
  const flow = data.command('flow').description("A flow's resolved plan and what its tree holds on disk.");
  const withRoot = (cmd: Command) =>
    flowArguments(cmd).option('--data-root <dir>', "the training config's data_root", defaultConfig().data_root);
  type Flags = FlowFlags & { dataRoot: string };
  const resolve = (mixture: string, flows: string, opts: Flags) => {
    const ref = flowRef(mixture, flows, opts, opts.dataRoot);
    const { plan, sources } = resolveFlow(ref);
    return { ref, plan, statuses: sources.map(sourceStatus) };
  };

  withRoot(
    flow
      .command('show')
      .description(
        'The plan as the loader resolves it: plan_hash, per stage each source with its weight, quota and tokens on disk.',
      ),
  )
    .option('--json', 'print the plan and the disk status as JSON', false)
    .action((mixture: string, flows: string, opts: Flags & { json: boolean }) => {
      const { ref, plan, statuses } = resolve(mixture, flows, opts);
      if (opts.json) {
        const stages = plan.stages.map((st) => ({
          stage: st.stage_id,
          mixture: st.mixture,
          total_tokens_b: st.total_tokens_b,
          sources: statuses
            .filter((s) => s.stage === st.stage_id)
            .map((s) => ({
              ...s.plan,
              quota_tokens: s.quotaTokens,
              dir: s.dir,
              tokens: s.tokens,
              shards: s.shards,
              tokenizers: s.tokenizers,
              state: s.state,
            })),
        }));
        const { stages: _, ...head } = plan;
        process.stdout.write(
          `${JSON.stringify({ ...head, flow: ref.flow, data_root: ref.dataRoot, stages }, null, 2)}\n`,
        );
        return;
      }
      const lines = [
        `flow ${ref.flow} (mode ${plan.flow_mode}, plan ${plan.plan_id}), seq_len ${plan.seq_len}`,
        `plan_hash ${plan.plan_hash}`,
        `data ${ref.dataRoot}/flows/${ref.flow}`,
      ];
      for (const st of plan.stages) {
        const of = statuses.filter((s) => s.stage === st.stage_id);
        const sequences = of.reduce((k, s) => k + s.plan.quota_sequences, 0);
        lines.push(
          `stage ${st.stage_id} ([mixtures.${st.mixture}]): ${n(Math.trunc(st.total_tokens_b * 1e9))} tokens, ${n(sequences)} sequences`,
        );
        lines.push(...statusRows(of));
      }
      process.stdout.write(`${lines.join('\n')}\n`);
    });

  withRoot(
    flow
      .command('verify')
      .description(
        'Whether every source of the flow holds its quota on disk; lists what is missing or short and exits 2 if anything is.',
      ),
  ).action((mixture: string, flows: string, opts: Flags) => {
    const { ref, plan, statuses } = resolve(mixture, flows, opts);
    const flowDir = `${ref.dataRoot}/flows/${ref.flow}`;
    const problems = flowProblems(statuses, { flowDir, prepCommand: prepCommand(ref) });
    if (problems.length > 0) {
      for (const p of problems) process.stdout.write(`${pc.red('FAIL')} ${p}\n`);
      process.stdout.write(`flow ${ref.flow}: ${problems.length} problem(s) in ${flowDir}\n`);
      throw new CommanderError(2, 'nmoe.incomplete', 'the flow is incomplete');
    }
    const tokens = statuses.reduce((k, s) => k + s.tokens, 0);
    process.stdout.write(
      `${pc.green('ok')} flow ${ref.flow}: ${statuses.length} sources complete, ${n(tokens)} tokens (plan_hash ${plan.plan_hash})\n`,
    );
  });
}

function registerMergeManifests(data: Command): void {
  data
    .command('merge-manifests')
    .description(
      'One manifest.json in -o listing the shards of several prep outputs below it (e.g. the worker_NNN/ parts of a prep split over machines); one tokenizer only.',
    )
    .argument('<dir...>', 'prep output folders, each with its manifest.json, below -o')
    .requiredOption('-o, --output <dir>', 'where the merged manifest.json goes')
    .option('--name <name>', 'dataset name of the merged manifest (default: the parts\' common name, else "merged")')
    .action((dirs: string[], opts: { output: string; name?: string }) => {
      const { path, manifest: m } = mergeManifests({ dirs, output: opts.output, name: opts.name });
      process.stdout.write(
        `merged ${dirs.length} manifests: ${n(m.total_documents)} documents, ${n(m.total_tokens)} tokens in ${m.num_shards} shards -> ${path}\n`,
      );
    });
}

export function registerFlowCommands(data: Command): void {
  registerPrepMixture(data);
  registerMergeManifests(data);
  registerFlow(data);
}
