/**
 * cuDNN attention on a GPU machine, against nmoe's own flash kernels: for each shape it builds the forward and
 * both backward plans (deterministic and not), runs them on random bf16 inputs, compares out, lse, dq, dk, dv with
 * CudaBackend.attention / attentionBackward (‖a − b‖ / ‖b‖), checks every output element was written (outputs are
 * poisoned with NaN first), runs each backward twice to see whether it is bit-reproducible, and times both sides
 * (median of --iters after warm-up, device events). Node only, no PyTorch.
 *
 *   node --import tsx tools/cudnn-check.ts [--shapes tiny,tiny-eq,tiny-s64,medium,moonlet6] [--iters 20]
 *        [--out DIR] [--log-level 0-3]
 *
 * A failure prints the step, cuDNN's status and last error text, and (for plans) what each heuristic mode
 * returned and why each engine config was passed over; the script then goes on with the next step or shape. It
 * ends with a summary table. Into --out (default $OUT, else runs/cudnn-check) it writes report.json (every plan
 * report, including cuDNN's JSON description of each chosen plan) and cudnn.log (cuDNN's own log, at
 * --log-level: 1 errors, 2 and warnings, 3 and info; default 1). NMOE_CUDNN_PATH picks another libcudnn.so.9.
 */
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { makeDirs } from '../src/util/dirs.ts';

const { values: args } = parseArgs({
  options: {
    shapes: { type: 'string', default: 'tiny,tiny-eq,tiny-s64,medium,moonlet6' },
    iters: { type: 'string', default: '20' },
    out: { type: 'string', default: process.env.OUT ?? 'runs/cudnn-check' },
    'log-level': { type: 'string', default: '1' },
  },
});
const outDir = resolve(args.out!);
makeDirs(outDir);
// cuDNN reads its logging settings when it loads, so they are set before anything imports it.
process.env.CUDNN_LOGLEVEL_DBG ??= args['log-level']!;
process.env.CUDNN_LOGDEST_DBG ??= join(outDir, 'cudnn.log');

const { CudnnError, PlanError, cudnnProbe, lastErrorString } = await import('../src/tensor/cuda/cudnn.ts');
type Attn = InstanceType<typeof CudnnAttention>;
type Shape = import('../src/tensor/cuda/sdpa.ts').SdpaShape;
type Report = import('../src/tensor/cuda/cudnn.ts').PlanReport;
type Tensor = import('../src/tensor/tensor.ts').Tensor;

const SHAPES: Record<string, Shape> = {
  tiny: { batch: 2, seqLen: 128, heads: 2, dQK: 64, dV: 32 },
  'tiny-eq': { batch: 2, seqLen: 128, heads: 2, dQK: 64, dV: 64 },
  'tiny-s64': { batch: 2, seqLen: 64, heads: 2, dQK: 48, dV: 32 },
  medium: { batch: 1, seqLen: 512, heads: 4, dQK: 192, dV: 128 },
  moonlet6: { batch: 2, seqLen: 4096, heads: 16, dQK: 192, dV: 128 },
};
const ITERS = Number(args.iters);
const say = (s: string) => process.stdout.write(`${s}\n`);

// --- where we are ---------------------------------------------------------------------------------------------

const probe = cudnnProbe();
if (!probe.ok) {
  say(`cuDNN not found: ${probe.reason}`);
  process.exit(1);
}
say(`cuDNN ${probe.text} (${probe.version}, built for CUDA runtime ${probe.cudart}) via ${probe.path}`);
// The CUDA backend (and sdpa.ts, which launches kernels) load the driver: after the cuDNN line, so a machine
// without a GPU still says which cuDNN it has.
const started = await (async () => {
  try {
    const { CudaBackend } = await import('../src/tensor/cuda/backend.ts');
    const sdpa = await import('../src/tensor/cuda/sdpa.ts');
    return { b: new CudaBackend(0), ...sdpa };
  } catch (err) {
    say(`the CUDA backend cannot start: ${(err as Error).message}`);
    return process.exit(1);
  }
})();
const { b, CudnnAttention, staticLimits } = started;
const dev = b.dev;
say(
  `device ${b.name} (${dev.info.arch}); cuDNN log (level ${process.env.CUDNN_LOGLEVEL_DBG}) -> ${process.env.CUDNN_LOGDEST_DBG}`,
);

const full: Record<string, unknown> = { cudnn: probe, device: b.name, shapes: {} };
const failures: string[] = [];

/** Runs one step; on failure prints what failed (with cuDNN's last words) and returns null. */
async function step<T>(label: string, fn: () => T | Promise<T>): Promise<T | null> {
  try {
    return await fn();
  } catch (err) {
    const e = err as Error;
    let text = e.message;
    if (!(err instanceof CudnnError) && !(err instanceof PlanError)) {
      const last = (() => {
        try {
          return lastErrorString();
        } catch {
          return '';
        }
      })();
      if (last) text += ` [cuDNN last error: ${last}]`;
    }
    say(`  FAIL ${label}: ${text}`);
    if (err instanceof PlanError)
      say(
        planLines(err.report)
          .map((l) => `       ${l}`)
          .join('\n'),
      );
    failures.push(`${label}: ${text.slice(0, 300)}`);
    return null;
  }
}

function planLines(r: Report): string[] {
  const modes = Object.entries(r.configs)
    .map(([m, c]) => `${m}=${typeof c === 'number' ? c : `error(${String(c).slice(0, 160)})`}`)
    .join(' ');
  const lines = [
    `graph '${r.graph}' (${r.ops} ops, ${r.engines} engines): heuristics ${modes || 'none asked'}; ${r.buildMs.toFixed(0)} ms`,
  ];
  for (const a of r.attempts.slice(0, 6)) {
    const what = `${a.mode}#${a.index} engine ${a.engine ?? '?'} [${(a.numericalNotes ?? []).join(',')}${a.behaviorNotes?.length ? ` | ${a.behaviorNotes.join(',')}` : ''}]`;
    lines.push(
      a === r.chosen
        ? `picked ${what}, workspace ${fmtBytes(a.workspaceBytes ?? 0)}`
        : `passed over ${what}: ${(a.rejected ?? '').slice(0, 200)}`,
    );
  }
  if (r.attempts.length > 6) lines.push(`(${r.attempts.length - 6} more configs tried)`);
  return lines;
}

function fmtBytes(n: number): string {
  return n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${n} B`;
}

// --- numerics ---------------------------------------------------------------------------------------------------

function relErr(a: Float32Array, ref: Float32Array): number {
  let d = 0,
    n = 0;
  for (let i = 0; i < a.length; i++) {
    d += (a[i]! - ref[i]!) ** 2;
    n += ref[i]! ** 2;
  }
  return Math.sqrt(d / Math.max(n, 1e-30));
}

function nonFinite(a: Float32Array): number {
  let c = 0;
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i]!)) c++;
  return c;
}

function sameBits(a: Float32Array, b: Float32Array): boolean {
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length),
    y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

const read = async (t: Tensor) => (await b.read(t)) as Float32Array;

function poisoned(shape: number[], dtype: 'bf16' | 'f32'): Tensor {
  const t = b.empty(shape, dtype);
  b.fill(t, Number.NaN);
  return t;
}

/** Median device ms of `fn` over ITERS runs after 3 warm-ups. */
async function time(fn: () => void): Promise<number> {
  for (let i = 0; i < 3; i++) fn();
  await b.synchronize();
  const ms: number[] = [];
  for (let i = 0; i < ITERS; i++) {
    const end = dev.startTiming();
    fn();
    ms.push(end()());
  }
  ms.sort((x, y) => x - y);
  return ms[Math.floor(ms.length / 2)]!;
}

// --- the check --------------------------------------------------------------------------------------------------

interface Row {
  shape: string;
  pass: string;
  build: string;
  engine: string;
  errors: string;
  written: string;
  bitwise: string;
  ms: string;
  tflops: string;
  flashMs: string;
  flashTflops: string;
}
const rows: Row[] = [];
const blankRow = (shape: string, pass: string): Row => ({
  shape,
  pass,
  build: '-',
  engine: '-',
  errors: '-',
  written: '-',
  bitwise: '-',
  ms: '-',
  tflops: '-',
  flashMs: '-',
  flashTflops: '-',
});

const attns: { det: Attn | null; nondet: Attn | null } = { det: null, nondet: null };
attns.det = await step(
  'create the cuDNN handle (deterministic backward)',
  () => new CudnnAttention(dev, { deterministic: true }),
);
attns.nondet = await step(
  'create the cuDNN handle (default backward)',
  () => new CudnnAttention(dev, { deterministic: false }),
);

for (const name of args
  .shapes!.split(',')
  .map((s) => s.trim())
  .filter(Boolean)) {
  const s = SHAPES[name];
  if (!s) {
    say(`unknown shape ${name} (known: ${Object.keys(SHAPES).join(', ')})`);
    continue;
  }
  const { batch: B, seqLen: S, heads: H, dQK, dV } = s;
  const T = B * S;
  const spec = { batch: B, seqLen: S, heads: H, scale: dQK ** -0.5 };
  const flashSpec = { ...spec, kernel: 'nmoe' as const }; // the reference: nmoe's own kernels, whatever attn_kernel defaults to
  const fwdFlops = B * H * S * S * (dQK + dV); // 2 * B*H*S*S*(dQK+dV) / 2 (causal)
  const shapeText = `B${B} S${S} H${H} d${dQK}/${dV}`;
  say(`\n== ${name}: ${shapeText}`);
  const shapeReport: Record<string, unknown> = { shape: s };
  (full.shapes as Record<string, unknown>)[name] = shapeReport;

  const limit = staticLimits(s, 'bf16', probe.version);
  if (limit) {
    say(`  not for cuDNN here (nmoe's kernels run it): ${limit}`);
    shapeReport.staticLimit = limit;
    rows.push({ ...blankRow(name, 'all'), build: 'static limit' });
    continue;
  }

  // Plans.
  const plans: Record<string, ReturnType<Attn['plan']> | null> = {};
  const passes: [string, Attn | null, 'fwd' | 'bwd'][] = [
    ['fwd', attns.det, 'fwd'],
    ['bwd det', attns.det, 'bwd'],
    ['bwd nondet', attns.nondet, 'bwd'],
  ];
  for (const [label, attn, pass] of passes) {
    if (!attn) continue;
    const e = await step(`${name} ${label} plan`, () => attn.plan(s, pass));
    plans[label] = e;
    if (!e) continue;
    shapeReport[`${label} plan`] = e.ok
      ? { style: e.style, reports: e.reports }
      : { reason: e.reason, reports: e.reports };
    if (e.ok) {
      say(`  ${label} plan (${e.style} graph): ${planLines(e.plan.report).join('; ')}`);
    } else {
      say(`  ${label} plan: NONE: ${e.reason.slice(0, 600)}`);
      for (const r of e.reports)
        say(
          planLines(r)
            .map((l) => `       ${l}`)
            .join('\n'),
        );
      failures.push(`${name} ${label} plan: ${e.reason.slice(0, 300)}`);
    }
  }
  const planOk = (label: string) => {
    const p = plans[label];
    return p && p.ok ? p : null;
  };

  // Inputs and the flash reference.
  const randn = (shape: number[], stream: number) => {
    const t = b.empty(shape, 'bf16');
    b.fillNormal(t, { std: 1, seed: 1234, stream });
    return t;
  };
  const q = randn([T, H * dQK], 1),
    k = randn([T, H * dQK], 2),
    v = randn([T, H * dV], 3),
    dO = randn([T, H * dV], 4);
  const ref = await step(`${name} flash reference`, async () => {
    const f = b.attention(q, k, v, flashSpec);
    const g = b.attentionBackward(dO, q, k, v, f.out, f.lse, flashSpec);
    const host = {
      out: await read(f.out),
      lse: await read(f.lse),
      dq: await read(g.dq),
      dk: await read(g.dk),
      dv: await read(g.dv),
    };
    return { dev: { ...f, ...g }, host };
  });
  if (!ref) {
    for (const t of [q, k, v, dO]) t.free();
    continue;
  }

  // Forward.
  const fwdRow = blankRow(name, 'fwd');
  const fwd = planOk('fwd');
  if (!fwd) fwdRow.build = 'no plan';
  let cudnnOut: { out: Tensor; lse: Tensor } | null = null;
  if (fwd && attns.det) {
    const det = attns.det;
    const r = fwd.plan.report;
    Object.assign(fwdRow, {
      build: `${r.buildMs.toFixed(0)} ms`,
      engine: `${r.chosen!.mode}#${r.chosen!.index} e${r.chosen!.engine}${fwd.style === 'frontend' ? '' : ' (int)'}`,
    });
    await step(`${name} fwd run`, async () => {
      const out = poisoned([T, H * dV], 'bf16'),
        lse = poisoned([T, H], 'f32');
      det.forward(q, k, v, out, lse, spec);
      const o = await read(out),
        l = await read(lse);
      const errs = { out: relErr(o, ref.host.out), lse: relErr(l, ref.host.lse) };
      const bad = { out: nonFinite(o), lse: nonFinite(l) };
      say(
        `  fwd: err out ${errs.out.toExponential(2)} lse ${errs.lse.toExponential(2)}; non-finite out ${bad.out}/${o.length} lse ${bad.lse}/${l.length}`,
      );
      shapeReport.fwd = { errs, nonFinite: bad };
      fwdRow.errors = `o ${errs.out.toExponential(1)} l ${errs.lse.toExponential(1)}`;
      fwdRow.written = bad.out + bad.lse === 0 ? 'all' : `${bad.out + bad.lse} NaN`;
      if (errs.out > 1e-2 || errs.lse > 1e-4 || bad.out + bad.lse > 0)
        failures.push(`${name} fwd: out ${errs.out}, lse ${errs.lse}, non-finite ${bad.out + bad.lse}`);
      cudnnOut = { out, lse };
    });
    await step(`${name} fwd timing`, async () => {
      const out = b.empty([T, H * dV], 'bf16'),
        lse = b.empty([T, H], 'f32');
      const ms = await time(() => det.forward(q, k, v, out, lse, spec));
      const flashMs = await time(() => {
        const f = b.attention(q, k, v, flashSpec);
        f.out.free();
        f.lse.free();
      });
      Object.assign(fwdRow, {
        ms: ms.toFixed(3),
        tflops: (fwdFlops / ms / 1e9).toFixed(0),
        flashMs: flashMs.toFixed(3),
        flashTflops: (fwdFlops / flashMs / 1e9).toFixed(0),
      });
      say(
        `  fwd time: cuDNN ${ms.toFixed(3)} ms (${fwdRow.tflops} TFLOPS), flash ${flashMs.toFixed(3)} ms (${fwdRow.flashTflops} TFLOPS)`,
      );
      shapeReport.fwdTime = { ms, flashMs };
      out.free();
      lse.free();
    });
  }
  rows.push(fwdRow);

  // Backward, both algorithms.
  let flashBwdMs: number | null = null;
  for (const [label, attn] of [
    ['bwd det', attns.det],
    ['bwd nondet', attns.nondet],
  ] as const) {
    const row = blankRow(name, label);
    rows.push(row);
    const p = planOk(label);
    if (!p || !attn) {
      row.build = 'no plan';
      continue;
    }
    const r = p.plan.report;
    Object.assign(row, {
      build: `${r.buildMs.toFixed(0)} ms`,
      engine: `${r.chosen!.mode}#${r.chosen!.index} e${r.chosen!.engine}${p.style === 'frontend' ? '' : ' (int)'}`,
    });
    const runs: Float32Array[][] = [];
    await step(`${name} ${label} run`, async () => {
      for (let run = 0; run < 2; run++) {
        const dq = poisoned([T, H * dQK], 'bf16'),
          dk = poisoned([T, H * dQK], 'bf16'),
          dv = poisoned([T, H * dV], 'bf16');
        attn.backward(dO, q, k, v, ref.dev.out, ref.dev.lse, dq, dk, dv, spec);
        runs.push([await read(dq), await read(dk), await read(dv)]);
        for (const t of [dq, dk, dv]) t.free();
      }
      const [g] = runs as [Float32Array[]];
      const errs = { dq: relErr(g[0]!, ref.host.dq), dk: relErr(g[1]!, ref.host.dk), dv: relErr(g[2]!, ref.host.dv) };
      const bad = g.reduce((n, x) => n + nonFinite(x), 0);
      const bitwise = runs[1]!.every((x, i) => sameBits(x, runs[0]![i]!));
      say(
        `  ${label}: err dq ${errs.dq.toExponential(2)} dk ${errs.dk.toExponential(2)} dv ${errs.dv.toExponential(2)}; non-finite ${bad}; two runs bit-identical: ${bitwise}`,
      );
      shapeReport[label] = { errs, nonFinite: bad, bitwise };
      Object.assign(row, {
        errors: `q ${errs.dq.toExponential(1)} k ${errs.dk.toExponential(1)} v ${errs.dv.toExponential(1)}`,
        written: bad === 0 ? 'all' : `${bad} NaN`,
        bitwise: bitwise ? 'yes' : 'NO',
      });
      if (Math.max(errs.dq, errs.dk, errs.dv) > 1e-2 || bad > 0)
        failures.push(`${name} ${label}: dq ${errs.dq}, dk ${errs.dk}, dv ${errs.dv}, non-finite ${bad}`);
    });
    if (cudnnOut && label === 'bwd det') {
      const co = cudnnOut as { out: Tensor; lse: Tensor };
      await step(`${name} ${label} on cuDNN's own forward`, async () => {
        const dq = poisoned([T, H * dQK], 'bf16'),
          dk = poisoned([T, H * dQK], 'bf16'),
          dv = poisoned([T, H * dV], 'bf16');
        attn.backward(dO, q, k, v, co.out, co.lse, dq, dk, dv, spec);
        const e = [
          relErr(await read(dq), ref.host.dq),
          relErr(await read(dk), ref.host.dk),
          relErr(await read(dv), ref.host.dv),
        ];
        say(
          `  ${label} from cuDNN's out/lse: err dq ${e[0]!.toExponential(2)} dk ${e[1]!.toExponential(2)} dv ${e[2]!.toExponential(2)}`,
        );
        shapeReport[`${label} chained`] = e;
        for (const t of [dq, dk, dv]) t.free();
      });
    }
    await step(`${name} ${label} timing`, async () => {
      const dq = b.empty([T, H * dQK], 'bf16'),
        dk = b.empty([T, H * dQK], 'bf16'),
        dv = b.empty([T, H * dV], 'bf16');
      const ms = await time(() => attn.backward(dO, q, k, v, ref.dev.out, ref.dev.lse, dq, dk, dv, spec));
      flashBwdMs ??= await time(() => {
        const g = b.attentionBackward(dO, q, k, v, ref.dev.out, ref.dev.lse, flashSpec);
        g.dq.free();
        g.dk.free();
        g.dv.free();
      });
      const fl = 2.5 * fwdFlops;
      Object.assign(row, {
        ms: ms.toFixed(3),
        tflops: (fl / ms / 1e9).toFixed(0),
        flashMs: flashBwdMs.toFixed(3),
        flashTflops: (fl / flashBwdMs / 1e9).toFixed(0),
      });
      say(
        `  ${label} time: cuDNN ${ms.toFixed(3)} ms (${row.tflops} TFLOPS), flash ${flashBwdMs.toFixed(3)} ms (${row.flashTflops} TFLOPS)`,
      );
      shapeReport[`${label} time`] = { ms, flashMs: flashBwdMs };
      for (const t of [dq, dk, dv]) t.free();
    });
  }
  if (cudnnOut) for (const t of Object.values(cudnnOut as { out: Tensor; lse: Tensor })) t.free();
  for (const t of [q, k, v, dO, ref.dev.out, ref.dev.lse, ref.dev.dq, ref.dev.dk, ref.dev.dv]) t.free();
}

// --- summary ----------------------------------------------------------------------------------------------------

writeFileSync(join(outDir, 'report.json'), `${JSON.stringify({ ...full, failures }, null, 1)}\n`);
const cols: [keyof Row, string][] = [
  ['shape', 'shape'],
  ['pass', 'pass'],
  ['build', 'build'],
  ['engine', 'engine'],
  ['errors', 'rel. errors vs flash'],
  ['written', 'written'],
  ['bitwise', 'repro'],
  ['ms', 'cuDNN ms'],
  ['tflops', 'TF'],
  ['flashMs', 'flash ms'],
  ['flashTflops', 'TF'],
];
const width = cols.map(([k, h]) => Math.max(h.length, ...rows.map((r) => r[k].length)));
say(`\n== summary: cuDNN ${probe.text} on ${b.name} (errors: bf16 < 1e-2, lse < 1e-4; causal flops, bwd = 2.5x fwd)`);
say(cols.map(([, h], i) => h.padEnd(width[i]!)).join('  '));
for (const r of rows) say(cols.map(([k], i) => r[k].padEnd(width[i]!)).join('  '));
say(
  failures.length ? `\n${failures.length} problem(s):\n${failures.map((f) => `  - ${f}`).join('\n')}` : '\nno problems',
);
say(`report: ${join(outDir, 'report.json')}`);
for (const a of [attns.det, attns.nondet]) a?.destroy();
process.exit(failures.length ? 1 : 0);
