/**
 * `nmoe generate <model> --prompt TEXT | --prompts-file F`: continues each prompt with the KV-cached decoder
 * (src/eval/generate.ts), streaming the text to stdout as it is chosen, and reports prefill and decode tokens/s on
 * stderr. <model> is a checkpoint_dir, one iter_NNNNNNN step, or an `nmoe ckpt export --format hf` directory.
 * Under `nmoe launch` the ranks split the experts: rank 0 generates and prints, and the other ranks serve their
 * experts to its forwards (src/eval/lockstep.ts).
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import pc from 'picocolors';
import { TextStream, generate } from '../eval/generate.ts';
import { Lockstep } from '../eval/lockstep.ts';
import { type Opened, modelLine, openModel } from '../eval/load-model.ts';
import { Sampler } from '../eval/sampling.ts';
import { Decoder } from '../model/decoder.ts';
import { UserError } from '../util/errors.ts';
import { deviceOption, numberOption, wholeOption } from './flags.ts';
import { formatCount } from './progress.ts';

interface GenerateFlags {
  prompt?: string;
  promptsFile?: string;
  maxTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  seed: number;
  device: 'auto' | 'cpu' | 'cuda';
  stopAtEos: boolean;
}

/** The prompts to run: --prompt, or one per non-empty line of --prompts-file. */
function prompts(o: GenerateFlags): string[] {
  if ((o.prompt === undefined) === (o.promptsFile === undefined))
    throw new UserError(
      'give exactly one of --prompt TEXT and --prompts-file FILE. Fix: e.g. nmoe generate runs/tiny/checkpoints --prompt "Call me".',
    );
  if (o.prompt !== undefined) {
    if (o.prompt === '') throw new UserError('--prompt is empty. Fix: give the text to continue.');
    return [o.prompt];
  }
  let text: string;
  try {
    text = readFileSync(o.promptsFile!, 'utf8');
  } catch (err) {
    throw new UserError(
      `--prompts-file ${o.promptsFile} cannot be read (${(err as Error).message}). Fix: pass a text file with one prompt per line.`,
    );
  }
  const lines = text.split(/\r?\n/).filter((l) => l.trim() !== '');
  if (!lines.length)
    throw new UserError(`--prompts-file ${o.promptsFile} has no non-empty line. Fix: write one prompt per line.`);
  return lines;
}

const rate = (tokens: number, seconds: number) => (seconds > 0 ? `${formatCount(tokens / seconds)} tok/s` : '-');

export function registerGenerateCommand(program: Command): void {
  program
    .command('generate')
    .description(
      'Continue prompts with a trained model (KV-cached decoding), streaming the text; reports prefill and decode tokens/s.',
    )
    .argument(
      '<model>',
      'a checkpoint_dir (newest complete step), one iter_NNNNNNN directory, or an HF export directory',
    )
    .option('--prompt <text>', 'the text to continue')
    .option('--prompts-file <file>', 'one prompt per line')
    .option('--max-tokens <n>', 'new tokens per prompt at most', wholeOption('--max-tokens', 1), 128)
    .option('--temperature <t>', 'sampling temperature; 0 is greedy', numberOption('--temperature', 0, 100, 0.8), 0)
    .option('--top-k <k>', 'sample from the k most likely tokens; 0 = all', wholeOption('--top-k', 0), 0)
    .option(
      '--top-p <p>',
      'sample from the most likely tokens up to this probability',
      numberOption('--top-p', 1e-6, 1, 0.95),
      1,
    )
    .option('--seed <n>', 'sampling seed (a seed reproduces a generation)', wholeOption('--seed', 0), 0)
    .option('--device <device>', 'auto, cpu or cuda', deviceOption, 'auto')
    .option('--no-stop-at-eos', 'keep going past the end-of-text token')
    .addHelpText(
      'after',
      '\nExamples:\n  nmoe generate runs/tiny/checkpoints --prompt "Call me Ishmael."\n  nmoe generate out/hf --prompts-file prompts.txt --temperature 0.8 --top-p 0.95 --seed 1' +
        '\n  nmoe launch --nproc-per-node 2 -- generate runs/tiny/checkpoints --prompt "Call me" --device cpu   (experts split over 2 ranks)',
    )
    .action(async (path: string, o: GenerateFlags) => {
      const texts = prompts(o);
      const warn = (m: string) => process.stderr.write(`${pc.yellow('warning:')} ${m}\n`);
      const opened = await openModel(path, o.device, warn);
      const { tokenizer, config } = opened;
      const dec = new Decoder(opened.model);
      let ok = false;
      try {
        const ls = new Lockstep(dec, opened.dist?.comm ?? null);
        if (ls.rank === 0) process.stderr.write(pc.dim(`${modelLine(opened)}\n`));
        for (const [i, text] of texts.entries()) {
          const ids = Array.from(tokenizer.encode(text));
          if (ids.length >= config.max_position_embeddings) {
            throw new UserError(
              `prompt ${i + 1} is ${ids.length} tokens; the model's positions end at max_position_embeddings = ${config.max_position_embeddings}. Fix: shorten it.`,
            );
          }
          if (ls.rank === 0) await generateOne(ls, opened, o, text, ids, i);
          await ls.finish();
        }
        ok = true;
      } finally {
        dec.free();
        await opened.close(ok);
      }
    });
}

/** Streams prompt `index`'s continuation (of its token ids `ids`) to stdout and its timing line to stderr. */
async function generateOne(
  ls: Lockstep,
  { tokenizer, config }: Opened,
  o: GenerateFlags,
  text: string,
  ids: number[],
  index: number,
): Promise<void> {
  const stream = new TextStream((t) => tokenizer.decode(t));
  process.stdout.write(text);
  const g = await generate(
    ls.dec,
    ids,
    new Sampler({ temperature: o.temperature, topK: o.topK, topP: o.topP, seed: o.seed }, index),
    {
      maxTokens: o.maxTokens,
      eosTokenId: o.stopAtEos ? config.eos_token_id : -1,
      onToken: (id) => process.stdout.write(stream.push(id)),
      lockstep: ls,
    },
  );
  process.stdout.write(`${stream.flush()}\n`);
  const stop = {
    eos: 'end of text',
    max_tokens: `--max-tokens ${o.maxTokens}`,
    context: `max_position_embeddings ${config.max_position_embeddings}`,
    until: 'a stop sequence',
  }[g.stop];
  process.stderr.write(
    pc.dim(
      `prefill ${g.prefillTokens} tokens in ${(g.prefillSeconds * 1000).toFixed(0)} ms (${rate(g.prefillTokens, g.prefillSeconds)}) | ` +
        `decode ${g.decodeTokens} tokens in ${(g.decodeSeconds * 1000).toFixed(0)} ms (${rate(g.decodeTokens, g.decodeSeconds)}) | ` +
        `${g.tokens.length} new tokens, stopped at ${stop}\n`,
    ),
  );
}
