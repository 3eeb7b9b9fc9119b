/**
 * `nmoe data ...`: prep (corpus -> token shards), verify, info, inspect, regenerate-index and dedup, with the flag
 * names and defaults of the reference's `nmoe.data.cli` (the flow commands are in data-flow-cmd.ts). The work lives
 * in src/data; this file parses flags, shows progress and prints reports. Problems found in data (missing or
 * corrupt shards, checksum mismatches, double EOS) end with exit code 2 after the full report.
 */
import { CommanderError, Option, type Command } from 'commander';
import pc from 'picocolors';
import { type DedupOptions, runDedup } from '../data/dedup.ts';
import { regenerateIndex } from '../data/idx.ts';
import { type InspectOptions, inspectShards } from '../data/inspect.ts';
import { readManifest, verifyManifest } from '../data/manifest.ts';
import { PREP_DEFAULTS, type PrepOptions } from '../data/prep/options.ts';
import { runPrep } from '../data/prep/prep.ts';
import { prepReport } from '../data/prep/report.ts';
import { SOURCE_KINDS } from '../data/sources/index.ts';
import { UserError } from '../util/errors.ts';
import { type FilterFlags, filtersFrom } from './filter-flags.ts';
import { wholeFlag } from './flags.ts';
import { registerFlowCommands } from './data-flow-cmd.ts';
import { type HydraPrepFlags, addHydraPrepOptions, hydraGateFrom, registerHydraCommand } from './hydra-cmd.ts';
import { addPrepSettings, count, prepProgress } from './prep-flags.ts';
import { Progress, formatCount, onInterrupt } from './progress.ts';

/** Option parsers for dedup's numbers: anything out of range is a one-line error that suggests the default. */
function whole(flag: string, min: number, fallback: number) {
  return (text: string): number => wholeFlag(flag, text, min, `e.g. ${flag} ${fallback} (the default)`);
}

function similarity(flag: string, fallback: number) {
  return (text: string): number => {
    const x = Number(text);
    if (!(x > 0 && x <= 1))
      throw new UserError(
        `${flag} ${JSON.stringify(text)} is not a similarity above 0 and at most 1. Fix: e.g. ${flag} ${fallback} (the default).`,
      );
    return x;
  };
}

function registerPrep(data: Command): void {
  const d = PREP_DEFAULTS;
  const prep = data
    .command('prep')
    .description("Tokenize a corpus into .npy/.idx shards with a manifest, in the reference's layout; resumable.")
    .addOption(new Option('--source <kind>', 'input kind').choices([...SOURCE_KINDS]).makeOptionMandatory())
    .option('--paths <paths...>', 'input files, folders or quoted glob patterns (local sources)', d.paths)
    .option('--dataset <id>', 'Hugging Face Hub dataset id (--source hf)')
    .option('--subset <name>', 'Hub dataset subset (config)')
    .option('--split <name>', 'Hub dataset split', d.split)
    .option('--text-field <name>', 'field holding the text', d.textField)
    .option('--id-field <name>', 'field holding the document id (default: "id" for jsonl, none otherwise)')
    .requiredOption('-o, --output <dir>', 'output folder')
    .requiredOption('--name <name>', 'dataset name, used in shard file names')
    .option('--max-tokens-total <n>', 'stop after this many tokens, e.g. 100M, 1B, 1.5T', count(1));
  addHydraPrepOptions(addPrepSettings(prep))
    .addHelpText(
      'after',
      '\nExamples:\n  nmoe data prep --source jsonl --paths raw/*.jsonl.zst -o /data/web --name web\n' +
        '  nmoe data prep --source hf --dataset HuggingFaceFW/fineweb-edu --subset sample-10BT -o /data/fw --name fw --max-tokens-total 1B\n' +
        '  nmoe data prep --source text --paths books/ -o data/books --name books --tokenizer bytes --num-shards 1',
    )
    .action(async (opts: Omit<PrepOptions, 'filters'> & FilterFlags & HydraPrepFlags & { maxTokensTotal?: number }) => {
      const o: PrepOptions = {
        ...PREP_DEFAULTS,
        ...opts,
        maxTokensTotal: opts.maxTokensTotal ?? null,
        filters: filtersFrom(opts),
        gate: await hydraGateFrom(opts),
      };
      const progress = new Progress();
      const interrupt = onInterrupt(
        progress,
        'interrupted: saving a checkpoint (Ctrl-C again to exit now; the next run resumes from the last checkpoint)',
      );
      const t0 = performance.now();
      try {
        const r = await runPrep(o, { progress: prepProgress(progress), signal: interrupt.signal });
        progress.finish();
        for (const line of prepReport(r, o, (performance.now() - t0) / 1000)) progress.line(line);
        // Exit code 130, as a shell reports Ctrl-C; commander's error type carries it through main() unprinted.
        if (r.interrupted) throw new CommanderError(130, 'nmoe.interrupted', 'interrupted');
      } finally {
        progress.finish();
        interrupt.dispose();
      }
    });
}

export function registerDataCommand(program: Command): void {
  // `data prep --version v1` is the reference's dataset-version flag; without positional options commander would
  // take it as the program's own --version anywhere on the line.
  program.enablePositionalOptions();
  const data = program
    .command('data')
    .description("Prepare, check and inspect token shards (the reference's data CLI).");
  registerPrep(data);
  registerFlowCommands(data);
  registerHydraCommand(data);

  data
    .command('verify')
    .description(
      'Check that every shard and index of a manifest exists and matches it; --checksums re-hashes the shards.',
    )
    .argument('<manifest>', 'path to manifest.json')
    .option('--checksums', 'also compare the SHA-256 of every shard (reads all data)', false)
    .action(async (path: string, opts: { checksums: boolean }) => {
      const r = await verifyManifest(path, { checksums: opts.checksums });
      if (r.problems.length > 0) {
        for (const p of r.problems) process.stdout.write(`${pc.red('FAIL')} ${p}\n`);
        throw new UserError(`${r.problems.length} problem(s) in ${path}. Fix: follow the fix on each FAIL line above.`);
      }
      process.stdout.write(
        `${pc.green('ok')} ${path}: ${r.shards} shards, ${formatCount(r.tokens)} tokens${opts.checksums ? ', checksums match' : ''}\n`,
      );
    });

  data
    .command('info')
    .description('Summarise a manifest.')
    .argument('<manifest>', 'path to manifest.json')
    .action((path: string) => {
      const m = readManifest(path);
      const stamp = m.tokenizer_hash ? ` (hash ${m.tokenizer_hash}, ${m.tokenizer_version ?? 'built in'})` : '';
      const rows: [string, unknown][] = [
        ['Dataset', m.dataset],
        ['Version', m.version],
        ['Tokenizer', `${m.tokenizer}${stamp}`],
        ['Vocab size', m.vocab_size],
        ['EOS token', m.eos_token_id],
        ['Dtype', m.dtype],
        ['Created', `${m.created_at}${m.creator_version ? ` by ${m.creator_version}` : ''}`],
        ['Total tokens', m.total_tokens.toLocaleString('en-US')],
        ['Total documents', m.total_documents.toLocaleString('en-US')],
        ['Shards', m.num_shards],
        ['Avg tokens/doc', (m.total_tokens / Math.max(1, m.total_documents)).toFixed(1)],
        ['Avg tokens/shard', Math.round(m.total_tokens / Math.max(1, m.num_shards)).toLocaleString('en-US')],
        ['Source', JSON.stringify(m.source_info.source ?? null)],
      ];
      for (const [k, v] of rows) process.stdout.write(`${`${k}:`.padEnd(18)}${v}\n`);
    });

  data
    .command('inspect')
    .description(
      'Quality checks on shards: EOS and double-EOS counts, token statistics, a sample decoded back to text.',
    )
    .option('--manifest <path>', 'manifest.json (gives the shards, EOS and tokenizer)')
    .option('--data-dir <dir>', 'a folder of .npy shards (without a manifest)')
    .option('--eos-token-id <n>', 'EOS id when there is no manifest', count(0))
    .option('--tokenizer <name>', 'tokenizer for decoding samples when there is no manifest')
    .option('--num-shards <n>', 'shards to inspect', count(1), 1)
    .option('--all', 'inspect every shard', false)
    .option('--sample <n>', 'decode n documents per shard back to text', count(0), 1)
    .option('--stats', 'token distribution: unique ids, vocabulary coverage, most frequent ids', false)
    .option('-v, --verbose', 'list every double-EOS position (first 10 per shard)', false)
    .action(async (opts: InspectOptions) => {
      const report = await inspectShards(opts, (line) => process.stdout.write(`${line}\n`));
      if (report.issues > 0)
        throw new UserError(`${report.issues} issue(s) found (see above). Fix: re-prepare the affected shards`);
    });

  data
    .command('regenerate-index')
    .description("Rebuild a shard's .idx from the EOS positions in the shard.")
    .argument('<shard>', 'path to a .npy shard')
    .requiredOption('--eos-token-id <n>', "EOS id of the shard's tokenizer", count(0))
    .action((shard: string, opts: { eosTokenId: number }) => {
      const r = regenerateIndex(shard, opts.eosTokenId);
      process.stdout.write(`wrote ${r.path}: ${r.documents.toLocaleString('en-US')} documents\n`);
      if (r.trailingTokens > 0)
        process.stdout.write(
          pc.yellow(`warning: ${r.trailingTokens} tokens after the last EOS belong to no document\n`),
        );
    });

  data
    .command('dedup')
    .description('Near-duplicate removal for JSONL (keep-first), MinHash-LSH over character shingles.')
    .requiredOption('--in <path>', 'input JSONL (.gz, .zst)')
    .requiredOption('--out <path>', 'output JSONL of the kept lines')
    .option('--text-field <name>', 'field holding the text', 'text')
    .option('--shingle <n>', 'characters per shingle', whole('--shingle', 1, 13), 13)
    .option('--perms <n>', 'MinHash permutations', whole('--perms', 1, 128), 128)
    .option('--jaccard <x>', 'drop a document this similar to an earlier one', similarity('--jaccard', 0.82), 0.82)
    .option('--seed <n>', 'seed of the hash permutations', whole('--seed', 0, 42), 42)
    .action(
      async ({
        in: input,
        out: output,
        ...rest
      }: Omit<DedupOptions, 'input' | 'output'> & { in: string; out: string }) => {
        const r = await runDedup({ input, output, ...rest });
        const n = (x: number) => x.toLocaleString('en-US');
        const skipped =
          r.skipped > 0 ? `, skipped ${r.skipped} unparseable or text-less lines (first: ${r.firstSkipped})` : '';
        process.stdout.write(
          `dedup: ${n(r.total)} records, kept ${n(r.kept)}, dropped ${n(r.dropped)} near-duplicates${skipped} -> ${output}\n`,
        );
      },
    );
}
