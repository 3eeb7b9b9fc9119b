/**
 * What the ranks of a run must agree on, asked through collectives: the same config and one checkpoint folder
 * before any work, and whether to stop after each step.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fingerprintDiff, mathFields } from '../config/fingerprint.ts';
import type { Config } from '../config/schema.ts';
import type { Communicator } from '../tensor/communicator.ts';
import type { DistRun } from '../comm/parallel.ts';
import type { Backend } from '../tensor/backend.ts';
import { UserError } from '../util/errors.ts';

/**
 * Ranks must train one config, and rank 0 assembles each checkpoint step from every rank's file, so checkpoint_dir
 * must be one folder that all of them see (on several nodes: a shared filesystem). Rank 0 shares its config's math
 * fields and a marker file it writes into checkpoint_dir; a rank whose config differs, or that cannot see the
 * marker, stops the run before any work, saying which.
 */
export async function checkRanksAgree(dist: DistRun, config: Config, b: Backend): Promise<void> {
  const rank = dist.env.rank;
  const rank0 = {
    ...config,
    ...(JSON.parse(await dist.agree('config', JSON.stringify(mathFields(config)))) as Partial<Config>),
  } as Config;
  const differ = fingerprintDiff(rank0, config).map(
    (k) =>
      `${k} (${JSON.stringify(rank0[k as keyof Config])} on rank 0, ${JSON.stringify(config[k as keyof Config])} here)`,
  );
  if (differ.length) {
    throw new UserError(
      `rank ${rank}'s config differs from rank 0's: ${differ.join(', ')}. Fix: start every rank with the same config file, environment and overrides.`,
    );
  }
  let marker = join(config.checkpoint_dir, `.nmoe-shared-${randomBytes(4).toString('hex')}`);
  if (rank === 0) writeFileSync(marker, ''); // the Checkpointer has made the folder and test-written it
  marker = await dist.agree('checkpoint-marker', marker);
  const seen = rank === 0 || existsSync(join(config.checkpoint_dir, basename(marker)));
  const allSeen = !(await anyRank(b, dist.comm, !seen)); // also: every rank has looked before rank 0 removes it
  if (rank === 0) rmSync(marker, { force: true });
  if (!seen) {
    throw new UserError(
      `rank ${rank} cannot see rank 0's checkpoint_dir: the file rank 0 wrote (${marker}) is not in ${config.checkpoint_dir} here, ` +
        "and rank 0 assembles every checkpoint step from all ranks' files there. Fix: put checkpoint_dir on a filesystem every node mounts at the same path.",
    );
  }
  if (!allSeen)
    throw new UserError(
      `rank ${rank}: another rank cannot see checkpoint_dir ${config.checkpoint_dir} (its own error says which). Fix: put checkpoint_dir on a filesystem every node mounts at the same path.`,
    );
}

/** True on every rank when `flag` is true on any. */
export async function anyRank(b: Backend, comm: Communicator, flag: boolean): Promise<boolean> {
  const t = b.upload(new Float32Array([flag ? 1 : 0]), [1], 'f32');
  comm.allReduce(t);
  const any = (await b.read(t))[0]! > 0;
  t.free();
  return any;
}
