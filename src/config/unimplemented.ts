/**
 * Keys nmoe accepts, so that the reference's configs load, but does not act on. Setting one (to anything but its
 * default) prints one warning line naming the key and what happens instead, at `nmoe config check` and at the
 * start of `nmoe train`; nothing is silently ignored. One table, so a key leaves it the day it is implemented.
 */
import { canonicalJson } from './fingerprint.ts';
import type { LoadedConfig } from './load.ts';
import { CONFIG_KEYS, FIELDS, type Config, tomlLiteral } from './schema.ts';

interface Unimplemented {
  keys: (keyof Config)[];
  instead: string;
  /** When it matters; default: the key differs from its default. */
  when?: (c: Config) => boolean;
}

const inSection = (section: string) => CONFIG_KEYS.filter((k) => FIELDS[k].section === section);

const UNIMPLEMENTED: Unimplemented[] = [
  {
    keys: ['eval_enabled', 'eval_mode', 'eval_reserved_gpu_id'],
    instead:
      'evals run inline in the trainer every eval_every steps (docs/eval.md); there are no scheduled evals on a reserved GPU or a job',
  },
  {
    keys: inSection('profiling'),
    instead: 'training captures no profile (`nmoe bench train --profile` profiles the ops)',
  },
  {
    keys: ['aux_loss_alpha'],
    instead:
      'there is no auxiliary balancing loss: the router bias update (router_bias_update_rate) alone balances the experts',
  },
  {
    keys: ['dtype'],
    when: (c) => c.dtype === 'nvfp4',
    instead: 'no backend computes FP4 (it needs Blackwell), so a run stops at once; set dtype = "bf16"',
  },
];

/** One line per unimplemented key the config sets: `<key> = <value> is accepted but not implemented: … [where]`. */
export function unimplementedWarnings({ config, origin }: Pick<LoadedConfig, 'config' | 'origin'>): string[] {
  return UNIMPLEMENTED.flatMap((u) =>
    u.keys
      .filter((k) => (u.when ? u.when(config) : canonicalJson(config[k]) !== canonicalJson(FIELDS[k].default)))
      .map(
        (k) =>
          `${k} = ${tomlLiteral(config[k], FIELDS[k].type)} is accepted but not implemented: ${u.instead} [${origin[k]}]`,
      ),
  );
}
