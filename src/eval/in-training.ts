/**
 * The eval inside `nmoe train` (`eval_every > 0`): every eval_every steps the configured tasks (`eval_tasks` of
 * `eval_tasks_file`) run on the live weights within `eval_budget_max_examples` items per task and
 * `eval_budget_max_time_s` seconds, and the trainer reports one line and the reference's metric tags
 * eval/task/<name>/{acc,centered,n} and eval/CORE.
 *
 * It cannot change the training trajectory: it reads the weights and nothing else of the run (no gradients,
 * optimizer state, loader or random stream; greedy decoding draws nothing), and what it allocates it frees. The task
 * data is read once, when the run starts, so a missing file stops the run before its first step. On several ranks
 * every rank runs it on its slice of the experts, in lockstep (lockstep.ts), and gets the same report.
 */
import type { Config } from '../config/schema.ts';
import { loadTokenizer } from '../data/tokenizers.ts';
import { Decoder } from '../model/decoder.ts';
import type { Transformer } from '../model/transformer.ts';
import type { Backend } from '../tensor/backend.ts';
import type { Communicator } from '../tensor/communicator.ts';
import { lockstepProblem } from './lockstep.ts';
import { type EvalReport, type LoadedTask, formatScore, runEval } from './runner.ts';
import { loadSuite } from './suite.ts';

export class TrainingEval {
  private constructor(
    readonly every: number,
    readonly tasks: LoadedTask[],
    readonly config: Config,
  ) {}

  /** Null when the config asks for no eval, or (with a warning) where `world` ranks on `b` cannot run one. */
  static async create(
    config: Config,
    b: Backend,
    world: number,
    say: { warn?: (message: string) => void; note?: (message: string) => void },
  ): Promise<TrainingEval | null> {
    if (config.eval_every <= 0) return null;
    const problem = lockstepProblem(b, world);
    if (problem) {
      say.warn?.(
        `eval_every is set, but evals on several GPU ranks are not supported (${problem}): no evals in this run`,
      );
      return null;
    }
    return new TrainingEval(
      config.eval_every,
      await loadSuite(config.eval_tasks_file, config.eval_tasks, { note: (m) => say.note?.(m) }),
      config,
    );
  }

  due(step: number): boolean {
    return step % this.every === 0;
  }

  /** On several ranks (`comm`), every rank calls this at the same step. */
  async run(model: Transformer, comm: Communicator | null): Promise<EvalReport> {
    const dec = new Decoder(model);
    try {
      const budget = {
        maxExamples: this.config.eval_budget_max_examples,
        maxSeconds: this.config.eval_budget_max_time_s,
      };
      return await runEval(dec, await loadTokenizer(this.config.tokenizer), this.tasks, budget, { comm });
    } finally {
      dec.free();
    }
  }
}

/** `[eval] step=N MMLU: acc=… centered=… n=… | … | CORE=…`, the reference's line plus CORE. */
export function evalLine(step: number, r: EvalReport): string {
  return `[eval] step=${step} ${[...r.tasks.map(formatScore), `CORE=${r.core.toFixed(4)}`].join(' | ')} (${r.seconds.toFixed(1)} s)`;
}
