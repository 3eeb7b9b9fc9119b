/**
 * Inference on several ranks whose experts are split over them (RDEP): every forward's MoE layers exchange rows with
 * every other rank, so all ranks must run the same number of forwards in the same order, whatever each one works on.
 *
 * The ranks vote before each forward. A rank with work votes 1 and runs its forward; a rank whose work is done votes 0
 * and, while any other rank voted 1, runs a dummy forward of one EOS token, which only serves the other ranks' rows
 * to its experts. A round in which every rank votes 0 ends the unit of work (an eval item, a prompt) on every rank
 * at once. The dummy's own result is thrown away; the rows it sends to other ranks' experts change nothing there,
 * since each routed row is computed on its own.
 *
 * On one rank nothing here talks to anyone: the votes and `finish` cost nothing.
 */
import type { Decoder } from '../model/decoder.ts';
import type { Backend } from '../tensor/backend.ts';
import type { Communicator } from '../tensor/communicator.ts';
import { UserError } from '../util/errors.ts';

export class Lockstep {
  readonly rank: number;
  readonly world: number;

  constructor(
    readonly dec: Decoder,
    readonly comm: Communicator | null,
  ) {
    this.rank = comm?.rank ?? 0;
    this.world = comm?.world ?? 1;
    assertLockstep(dec.model.b, this.world);
  }

  /** Before each forward of this rank's own work: its vote for a forward. */
  async forward(): Promise<void> {
    await this.any(true);
  }

  /** After this rank's part of a unit of work: dummy forwards while another rank still votes for a forward. */
  async finish(): Promise<void> {
    if (!this.comm) return;
    while (await this.any(false)) {
      const { b, cfg } = this.dec.model;
      const id = b.upload(Int32Array.of(cfg.eos_token_id), [1], 'i32');
      this.dec.hidden(id, 1, 1).free();
      id.free();
    }
  }

  /** Each of `values` summed over the ranks (in rank order, so every rank gets the same numbers). */
  async sum(values: readonly number[]): Promise<number[]> {
    if (!this.comm) return [...values];
    const { b } = this.dec.model;
    const t = b.upload(Float32Array.from(values), [values.length], 'f32');
    this.comm.allReduce(t);
    const out = Array.from(await b.read(t));
    t.free();
    return out;
  }

  /** True on every rank when `flag` is true on any. */
  async any(flag: boolean): Promise<boolean> {
    return (await this.sum([flag ? 1 : 0]))[0]! > 0;
  }
}

/** Why `world` ranks on `b` cannot infer in lockstep, or null where they can. */
export function lockstepProblem(b: Backend, world: number): string | null {
  if (world === 1 || b.device !== 'cuda') return null;
  // Ranks in lockstep route unequal rows (a rank that is done runs one-token forwards). The CUDA IPC exchange sizes
  // its receive side for that (world x the most rows a rank routes), but that case has never run on GPUs.
  return 'the GPU expert exchange with unequal rows per rank (what lockstep inference routes) has not been verified on GPUs';
}

/** Throws, with the fix, where `world` ranks on `b` cannot infer in lockstep. */
export function assertLockstep(b: Backend, world: number): void {
  const problem = lockstepProblem(b, world);
  if (problem)
    throw new UserError(
      `eval and generate on several GPU ranks are not supported: ${problem}. Fix: run them on one GPU, or on CPU ranks (--device cpu).`,
    );
}
