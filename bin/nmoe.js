#!/usr/bin/env node
// Entry point: runs the TypeScript sources through tsx, so `npx nmoe` needs no build step.
import { register } from 'tsx/esm/api';

register();
// `nmoe runs list | head`: a reader that stops reading is not an error, and a run must never die of it.
process.stdout.on('error', (err) => {
  if (err.code !== 'EPIPE') throw err;
});
const { main } = await import('../src/cli/main.ts');
process.exitCode = await main(process.argv.slice(2));
