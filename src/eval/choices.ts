/**
 * Scoring of a multiple-choice item, as the reference does it (nmoe/eval/choices.py): each option's score is the
 * summed log-likelihood of the tokens of " " + option after the prompt's tokens (encoded separately, not as one
 * string), unnormalised by length; the highest score is the model's answer (the first on a tie). All options of an
 * item go through one forward as a batch, each sequence padded at its end with EOS (causal attention: padding after
 * a sequence cannot change its earlier positions). A prompt longer than the model's positions loses its start.
 * On several ranks, `lockstep` holds the forward until every rank has voted (lockstep.ts).
 */
import type { TextTokenizer } from '../data/tokenizers.ts';
import type { Decoder } from '../model/decoder.ts';
import type { Lockstep } from './lockstep.ts';

export async function optionScores(
  dec: Decoder,
  tok: TextTokenizer,
  prompt: string,
  options: readonly string[],
  lockstep?: Lockstep,
): Promise<number[]> {
  const { b, cfg } = dec.model;
  const eos = cfg.eos_token_id;
  const opts = options.map((o) => (o === '' ? [eos] : Array.from(tok.encode(` ${o}`))));
  const longest = Math.max(...opts.map((o) => o.length));
  let p = Array.from(tok.encode(prompt));
  const room = cfg.max_position_embeddings - longest;
  if (room < 1)
    throw new Error(
      `optionScores: an option of ${longest} tokens leaves no room for the prompt in ${cfg.max_position_embeddings} positions`,
    );
  if (p.length > room) p = p.slice(p.length - room);
  const S = p.length + longest;
  const ids = new Int32Array(opts.length * S).fill(eos);
  opts.forEach((o, j) => {
    ids.set(p, j * S);
    ids.set(o, j * S + p.length);
  });
  await lockstep?.forward();
  const x = b.upload(ids, [ids.length], 'i32');
  const h = dec.hidden(x, opts.length, S);
  const D = h.shape[1]!;
  try {
    const scores: number[] = [];
    // The row before each option token predicts it: rows p.length - 1 ... p.length + |o| - 2 of its sequence.
    for (const [j, o] of opts.entries())
      scores.push(await dec.logLikelihood(b.view(h, [o.length, D], (j * S + p.length - 1) * D), Int32Array.from(o)));
    return scores;
  } finally {
    x.free();
    h.free();
  }
}
