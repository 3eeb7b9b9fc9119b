/**
 * `nmoe bench viz`: the dashboard on a synthetic long run (src/bench/viz-bench.ts), against nmoe's targets: a
 * 5-tag series of 100k points each downsampled to a chart's width in under 200 ms, and a first page ready in a
 * real browser in under 1 s. The run is written to a temporary folder, removed afterwards.
 */
import { wholeOption } from './flags.ts';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import pc from 'picocolors';
import { type Timing, benchViz } from '../bench/viz-bench.ts';
import { UserError } from '../util/errors.ts';

const verdict = (ok: boolean) => (ok ? pc.green('PASS') : pc.red('MISS'));
const ms = (t: Timing) => `median ${t.medianMs.toFixed(0)} ms, p90 ${t.p90Ms.toFixed(0)} ms over ${t.samples}`;

interface Flags {
  steps: number;
  requests: number;
  points: number;
  browser: string | false;
  loads: number;
}

export function registerBenchViz(bench: Command): void {
  bench
    .command('viz')
    .description(
      'The dashboard on a synthetic 100k-step x 200-tag run: series request time and first page ready in a browser.',
    )
    .option('--steps <n>', 'steps of the synthetic run (200 tags each)', wholeOption('--steps', 10), 100_000)
    .option('--requests <n>', 'series requests timed after the first', wholeOption('--requests', 1), 20)
    .option('--points <n>', "points per series (a chart's width)", wholeOption('--points', 200), 1000)
    .option('--browser <path>', 'Chromium to drive with playwright-core', '/usr/bin/chromium')
    .option('--no-browser', 'skip the browser measurement')
    .option('--loads <n>', "page loads per page (the first with the server's cache cold)", wholeOption('--loads', 2), 5)
    .action(async (f: Flags) => {
      if (f.browser && !existsSync(f.browser)) {
        throw new UserError(
          `no browser at ${f.browser}. Fix: install Chromium (apt-get install chromium), pass --browser PATH, or --no-browser.`,
        );
      }
      const say = (line: string) => process.stdout.write(`${line}\n`);
      say(
        `nmoe bench viz on ${cpus()[0]?.model ?? 'unknown CPU'}, ${availableParallelism()} cores, Node ${process.version}`,
      );
      say(pc.dim(`writing the synthetic run (about 0.3 s per 1,000 steps), then timing`));
      const dir = mkdtempSync(join(tmpdir(), 'nmoe-bench-viz-'));
      try {
        const r = await benchViz({
          dir,
          steps: f.steps,
          requests: f.requests,
          points: f.points,
          chromium: f.browser || null,
          pageLoads: f.loads,
        });
        say(
          `synthetic run: ${f.steps.toLocaleString('en-US')} steps x 200 tags = ${r.rows.toLocaleString('en-US')} rows, written in ${r.writeSeconds.toFixed(1)} s`,
        );
        say(
          `(a) /api/series, 5 tags x ${f.steps.toLocaleString('en-US')} points -> ${f.points}: first (attaching the run) ` +
            `${r.seriesFirstMs.toFixed(0)} ms, then ${ms(r.series)} requests for other tags; a cached answer ${r.seriesCachedMs.toFixed(1)} ms. ` +
            `Target < 200 ms: ${verdict(r.series.medianMs < 200)}`,
        );
        for (const p of r.pages ?? []) {
          say(
            `(b) ${p.path} in ${r.browser}, navigation to data-ready: first load ${p.coldMs.toFixed(0)} ms (server cache cold), ` +
              `then ${ms(p.warm)}. Target < 1 s: ${verdict(p.coldMs < 1000)}`,
          );
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
}
