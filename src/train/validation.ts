/**
 * Validation loss (`validation_enabled`): every `validation_every` steps the model's loss on the first
 * `validation_steps` global batches of the held-out shards in `validation_data_path` (the same batches every time,
 * so the numbers compare across steps), averaged over counted targets exactly as the training loss is (EOS masked
 * unless loss_mask_eos = false), and written as val/loss. No gradients, no activations kept, nothing of the run
 * touched. With several ranks every rank validates its slice of each batch in lockstep (the MoE layers exchange
 * tokens) and the sums are all-reduced.
 */
import type { LoaderConfig, ValidationConfig } from '../config/sections.ts';
import { validationLoaders } from '../data/loader/build.ts';
import type { DeterministicLoader } from '../data/loader/loader.ts';
import type { ValidationResult } from '../metrics/records.ts';
import type { Communicator } from '../tensor/communicator.ts';
import { Decoder } from '../model/decoder.ts';
import type { Transformer } from '../model/transformer.ts';

export class Validation {
  private constructor(
    readonly cfg: ValidationConfig & Pick<LoaderConfig, 'seq_len'>,
    readonly loaders: () => DeterministicLoader,
  ) {}

  /**
   * Null unless validation_enabled; opens (and checks) the shards now, so bad data stops the run before it starts.
   * The held-out shards are read as the loader section says the training data is (tokenizer, batch, seq_len).
   */
  static create(
    loader: LoaderConfig,
    validation: ValidationConfig,
    rank: number,
    world: number,
    warn: (m: string) => void,
  ): Validation | null {
    if (!validation.validation_enabled) return null;
    const cfg = { ...loader, ...validation };
    return new Validation(cfg, validationLoaders(cfg, rank, world, { warn }));
  }

  due(step: number): boolean {
    return step % this.cfg.validation_every === 0;
  }

  async run(model: Transformer, comm: Communicator | null): Promise<ValidationResult> {
    const t0 = performance.now();
    const { b } = model;
    const loader = this.loaders();
    const dec = new Decoder(model);
    let sum = 0,
      count = 0;
    for (let i = 0; i < this.cfg.validation_steps; i++) {
      const batch = loader.next();
      const ids = b.upload(batch.inputs, [batch.inputs.length], 'i32'),
        targets = b.upload(batch.targets, [batch.targets.length], 'i32');
      const h = dec.hidden(ids, batch.localBatch, this.cfg.seq_len);
      const r = b.crossEntropy(h, model.params.get('lm_head.weight'), targets, model.lossSpec);
      const [loss, n] = [(await b.read(r.loss))[0]!, (await b.read(r.count))[0]!];
      sum += loss * n;
      count += n;
      for (const t of [ids, targets, h, r.loss, r.count]) t.free();
    }
    dec.free();
    if (comm) {
      const both = b.upload(Float32Array.of(sum, count), [2], 'f32');
      comm.allReduce(both);
      [sum, count] = (await b.read(both)) as Float32Array;
      both.free();
    }
    return { loss: sum / Math.max(count, 1), tokens: count, seconds: (performance.now() - t0) / 1000 };
  }
}
