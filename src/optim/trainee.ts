/** What a training step updates and a checkpoint holds: a model and the optimizer that trains it. */
import type { Transformer } from '../model/transformer.ts';
import type { Communicator } from '../tensor/communicator.ts';
import type { Optimizer } from './optimizer.ts';

export interface Trainee {
  model: Transformer;
  opt: Optimizer;
  /** Data parallelism's collectives; null on one rank. */
  comm: Communicator | null;
}
