/**
 * `nmoe bench rdep`: RDEP dispatch and combine on the GPUs of this node (see src/bench/rdep-bench.ts), one
 * process per GPU through the launcher, for each tokens x top-k case. The PyTorch all-to-all baseline to compare
 * with is tools/torch_a2a_bench.py (same shapes, same byte count).
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { launch, rankCommand } from '../launch/launch.ts';
import { rendezvousTimeoutMs } from '../comm/rendezvous.ts';
import type { RdepResult } from '../bench/rdep-bench.ts';
import { UserError } from '../util/errors.ts';

/** NVLink 4 (H100/H200 SXM): 18 links x 25 GB/s leaving each GPU. */
const NVLINK_OUT_GBS = 450;
const ENTRY = fileURLToPath(new URL('../bench/rdep-rank.ts', import.meta.url));

const list = (v: string) =>
  v.split(',').map((x) => {
    const n = Number(x);
    if (!Number.isInteger(n) || n <= 0) throw new UserError(`"${x}" is not a positive whole number (in "${v}")`);
    return n;
  });

export function registerBenchRdep(bench: Command): void {
  bench
    .command('rdep')
    .description(
      "Time RDEP dispatch, combine and the round trip on this node's GPUs (uniform random routing), with GB/s per rank.",
    )
    .option('--nproc <n>', 'GPUs (ranks)', '4')
    .option('--tokens <list>', 'tokens per rank, comma-separated', '4096,16384,32768')
    .option('--topk <list>', 'experts per token, comma-separated', '6,8')
    .option('--dim <n>', 'row width (model dim), bf16', '2048')
    .option('--experts <n>', 'routed experts (divisible by --nproc)', '64')
    .option('--iters <n>', 'timed iterations per case (after 3 warm-up)', '20')
    .action(async (o: { nproc: string; tokens: string; topk: string; dim: string; experts: string; iters: string }) => {
      const [nproc] = list(o.nproc),
        [dim] = list(o.dim),
        [experts] = list(o.experts),
        [iters] = list(o.iters);
      if (nproc! < 2) throw new UserError('--nproc must be at least 2: RDEP moves rows between GPUs');
      if (experts! % nproc!)
        throw new UserError(
          `--experts ${experts} is not divisible by --nproc ${nproc}. Fix: make --experts a multiple of --nproc.`,
        );
      const cases = list(o.tokens).flatMap((tokens) => list(o.topk).map((topK) => ({ tokens, topK })));
      const k = Math.max(...cases.map((c) => c.topK));
      if (k > experts!)
        throw new UserError(`--topk ${k} is more than the ${experts} experts. Fix: lower --topk or raise --experts.`);
      // Before any process starts: this node must have the GPUs (a missing driver is an error listing where it looked).
      const { deviceCount } = await import('../tensor/cuda/device.ts');
      const gpus = deviceCount();
      if (gpus < nproc!)
        throw new UserError(
          `--nproc ${nproc}, but this node has ${gpus} GPU(s). Fix: --nproc ${Math.max(2, gpus)} or fewer${gpus < 2 ? ' (RDEP needs 2 GPUs)' : ''}.`,
        );
      const dir = mkdtempSync(join(tmpdir(), 'nmoe-bench-rdep-'));
      const out = join(dir, 'results.json');
      let r: { device: string; world: number; results: RdepResult[] };
      try {
        const command = rankCommand(ENTRY, [String(dim), String(experts), String(iters), JSON.stringify(cases), out]);
        const status = await launch({
          nprocPerNode: nproc!,
          nnodes: 1,
          nodeRank: 0,
          masterAddr: '127.0.0.1',
          masterPort: 0,
          command,
          rdzvTimeoutMs: rendezvousTimeoutMs(),
        });
        if (status !== 0)
          throw new UserError(`the benchmark's ranks failed (exit status ${status}); their output is above`);
        r = JSON.parse(readFileSync(out, 'utf8'));
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
      console.log(
        `${r.device} x ${r.world}, dim ${dim} bf16, ${experts} experts, uniform routing; NVLink limit ${NVLINK_OUT_GBS} GB/s out per GPU`,
      );
      console.log('tokens/rank  top-k  dispatch ms  combine ms  round trip ms  MB out/rank  GB/s/rank  of NVLink');
      for (const x of r.results) {
        console.log(
          `${String(x.tokens).padStart(11)}  ${String(x.topK).padStart(5)}  ${x.dispatchMs.toFixed(3).padStart(11)}  ${x.combineMs.toFixed(3).padStart(10)}  ` +
            `${x.roundTripMs.toFixed(3).padStart(13)}  ${(x.bytesPerRank / 1e6).toFixed(1).padStart(11)}  ${x.gbPerSecond.toFixed(1).padStart(9)}  ${((100 * x.gbPerSecond) / NVLINK_OUT_GBS).toFixed(0).padStart(7)}%`,
        );
      }
    });
}
