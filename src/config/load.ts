/**
 * Config loading, in the reference's order: TOML file, then the five NMOE_* environment overrides, then
 * `--key=value` command-line overrides, then validation. Each final value remembers where it came from, so that
 * errors and `nmoe config show` can point at `file:line`, the environment variable or the flag.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse, TomlError } from 'smol-toml';
import {
  CONFIG_KEYS,
  FIELDS,
  defaultConfig,
  isConfigKey,
  tomlLiteral,
  type Config,
  type ScalarType,
} from './schema.ts';
import {
  ConfigError,
  coerce,
  configProblems,
  isTable,
  problem,
  syntaxProblem,
  unknownKeyProblem,
  type Coerced,
} from './validate.ts';

export interface LoadOptions {
  /** Defaults to process.env. */
  env?: Record<string, string | undefined>;
  /** Command-line overrides: `--key=value`, `--table.key=value`, bare `--flag` / `--no-flag` for booleans. */
  overrides?: string[];
  /** Ranks that will share the run; defaults to $WORLD_SIZE, else 1. */
  worldSize?: number;
}

export interface LoadedConfig {
  config: Config;
  path: string;
  /** Per key: `"configs/x.toml:14"`, `"NMOE_STEPS (environment)"`, `"--steps=5 (command line)"` or `"default"`. */
  origin: Record<keyof Config, string>;
}

/** The reference reads exactly these environment variables as overrides. */
const ENV_OVERRIDES: Record<string, keyof Config> = {
  NMOE_DTYPE: 'dtype',
  NMOE_STEPS: 'steps',
  NMOE_BATCH_SIZE: 'batch_size',
  NMOE_SEQ_LEN: 'seq_len',
  NMOE_RESUME: 'resume',
};

/** configs/tiny.toml inside the package: the config `nmoe train` uses when given none. */
export function defaultConfigPath(): string {
  return fileURLToPath(new URL('../../configs/tiny.toml', import.meta.url));
}

export function loadConfig(path: string, opts: LoadOptions = {}): LoadedConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const reason =
      (err as NodeJS.ErrnoException).code === 'ENOENT'
        ? 'does not exist'
        : `cannot be read (${(err as Error).message})`;
    throw new ConfigError([
      problem(
        `config file ${path}`,
        reason,
        path,
        'check the path (the presets are in configs/, e.g. configs/tiny.toml)',
      ),
    ]);
  }
  let raw: Record<string, unknown>;
  try {
    raw = parse(text, { integersAsBigInt: true });
  } catch (err) {
    if (!(err instanceof TomlError)) throw err;
    const reason = err.message.replace(/^Invalid TOML document: /, '').split('\n')[0];
    throw new ConfigError([syntaxProblem(path, err.line, err.column, reason, text)]);
  }
  return resolveConfig(raw, { ...opts, file: path, lines: keyLines(text) });
}

export interface ResolveOptions extends LoadOptions {
  /** Named in messages and returned as `path`. */
  file?: string;
  /** Line of each dotted key in the file (see keyLines). */
  lines?: ReadonlyMap<string, number>;
}

/** Applies defaults, overrides and validation to an already-parsed TOML document. */
export function resolveConfig(raw: Record<string, unknown>, opts: ResolveOptions = {}): LoadedConfig {
  const file = opts.file ?? '<config>';
  const env = opts.env ?? process.env;
  const r = new Resolution();

  const fileWhere = (path: string): string => {
    const line = opts.lines?.get(path) ?? opts.lines?.get(path.split('.')[0]);
    return line === undefined ? file : `${file}:${line}`;
  };
  for (const [key, value] of Object.entries(raw)) {
    const type = isConfigKey(key) ? FIELDS[key].type : undefined;
    if (type?.kind === 'table' && isTable(value)) {
      for (const [sub, v] of Object.entries(value)) r.assign(key, sub, v, fileWhere(`${key}.${sub}`));
    } else {
      r.assign(key, undefined, value, fileWhere(key));
    }
  }

  for (const [name, key] of Object.entries(ENV_OVERRIDES)) {
    const text = env[name];
    if (text) r.assign(key, undefined, fromText(FIELDS[key].type as ScalarType, text), `${name} (environment)`);
  }

  for (const arg of opts.overrides ?? []) applyOverride(r, arg);

  const worldSize = opts.worldSize ?? worldSizeFromEnv(env, r.problems);
  if (!Number.isSafeInteger(worldSize) || worldSize < 1)
    throw new RangeError(`worldSize must be >= 1, got ${worldSize}`);
  r.problems.push(
    ...configProblems(r.config, {
      origin: (key) => r.origin[key],
      file,
      worldSize,
      skip: r.rejected,
    }),
  );
  if (r.problems.length) throw new ConfigError(r.problems);

  const origin = Object.fromEntries(CONFIG_KEYS.map((k) => [k, r.origin[k] ?? 'default']));
  return { config: r.config, path: file, origin: origin as Record<keyof Config, string> };
}

/** The config being built: values, where each came from, and the problems found so far. */
class Resolution {
  readonly config = defaultConfig();
  readonly origin: Partial<Record<keyof Config, string>> = {};
  readonly problems: string[] = [];
  /** Keys given a bad value; validation rules on them are skipped. */
  readonly rejected = new Set<string>();

  /** Sets `key` (or sub-key `sub` of a table field) from a parsed value. */
  assign(key: string, sub: string | undefined, value: unknown, where: string): void {
    const name = sub === undefined ? key : `${key}.${sub}`;
    if (!isConfigKey(key)) {
      this.problems.push(unknownKeyProblem(name, value, where, CONFIG_KEYS));
      return;
    }
    const type = FIELDS[key].type;
    let result: Coerced;
    if (type.kind === 'table') {
      if (sub === undefined) {
        const keys = Object.keys(type.keys);
        result = {
          ok: false,
          problem: problem(
            `${key} = ${tomlLiteral(value)}`,
            'is not a table',
            where,
            `set its sub-keys (${keys.join(', ')}) under a [${key}] header or as --${key}.${keys[0]}=<value>`,
          ),
        };
      } else if (!Object.hasOwn(type.keys, sub)) {
        this.problems.push(unknownKeyProblem(name, value, where, Object.keys(type.keys)));
        return;
      } else {
        result = coerce(name, type.keys[sub], value, where);
      }
    } else if (sub !== undefined) {
      this.problems.push(problem(name, `is not a config key (${key} is not a table)`, where, `set ${key} itself`));
      return;
    } else {
      result = coerce(name, type, value, where);
    }
    if (!result.ok) {
      this.problems.push(result.problem);
      this.rejected.add(key);
      return;
    }
    if (sub === undefined) (this.config as unknown as Record<string, unknown>)[key] = result.value;
    else (this.config[key] as Record<string, unknown>)[sub] = result.value;
    this.origin[key] = where;
  }
}

/** `--key=value`; `--kebab-key=value` is the same key; bare `--flag` / `--no-flag` set a boolean. */
function applyOverride(r: Resolution, arg: string): void {
  const where = `${arg} (command line)`;
  const match = /^--([^=]+)(?:=(.*))?$/s.exec(arg);
  if (!match) {
    r.problems.push(
      problem(JSON.stringify(arg), 'is not an override', where, 'write overrides as --key=value (e.g. --steps=5)'),
    );
    return;
  }
  let name = match[1].replace(/-/g, '_');
  let text = match[2];
  if (text === undefined) {
    if (isBool(name)) {
      text = 'true';
    } else if (name.startsWith('no_') && isBool(name.slice(3))) {
      [name, text] = [name.slice(3), 'false'];
    } else if (isConfigKey(name.split('.')[0])) {
      r.problems.push(problem(`--${name}`, 'needs a value', where, `write --${name}=<value> (one argument, with "=")`));
      return;
    } else {
      r.problems.push(unknownKeyProblem(name, undefined, where, CONFIG_KEYS));
      return;
    }
  }
  const dot = name.indexOf('.');
  const [key, sub] = dot < 0 ? [name, undefined] : [name.slice(0, dot), name.slice(dot + 1)];
  r.assign(key, sub, typed(key, sub, text), where);
}

function isBool(key: string): boolean {
  return isConfigKey(key) && FIELDS[key].type.kind === 'bool';
}

/** The scalar type at key[.sub], used to read text; unknown keys keep their text (they are rejected anyway). */
function typed(key: string, sub: string | undefined, text: string): unknown {
  if (!isConfigKey(key)) return text;
  const type = FIELDS[key].type;
  if (type.kind !== 'table') return sub === undefined ? fromText(type, text) : text;
  return sub !== undefined && Object.hasOwn(type.keys, sub) ? fromText(type.keys[sub], text) : text;
}

/**
 * Reads environment/command-line text the way the TOML parser would type it, guided by the field's type, so the
 * same `coerce` check applies to every source. An empty value clears a nullable field.
 */
function fromText(type: ScalarType, text: string): unknown {
  if (text === '' && type.nullable) return null;
  switch (type.kind) {
    case 'bool':
      return text === 'true' || text === '1' ? true : text === 'false' || text === '0' ? false : text;
    case 'int':
    case 'float': {
      const digits = text.trim().replace(/_/g, '');
      if (/^[+-]?\d+$/.test(digits)) return BigInt(digits);
      return digits.trim() !== '' && !Number.isNaN(Number(digits)) ? Number(digits) : text;
    }
    default:
      return text;
  }
}

function worldSizeFromEnv(env: Record<string, string | undefined>, problems: string[]): number {
  const text = env.WORLD_SIZE;
  if (!text) return 1;
  if (/^\d+$/.test(text) && Number(text) >= 1) return Number(text);
  problems.push(
    problem(
      `WORLD_SIZE = ${JSON.stringify(text)}`,
      'is not a positive integer',
      'WORLD_SIZE (environment)',
      'unset WORLD_SIZE or set it to the number of ranks',
    ),
  );
  return 1;
}

const KEY = String.raw`(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')`;
const DOTTED = String.raw`${KEY}(?:\s*\.\s*${KEY})*`;
const HEADER_RE = new RegExp(String.raw`^\s*\[\[?\s*(${DOTTED})\s*\]`);
const ASSIGN_RE = new RegExp(String.raw`^\s*(${DOTTED})\s*=`);

/**
 * The 1-based line of every `key = ...` (as `table.key` under a `[table]` header) and every `[table]` header. The
 * TOML parser does not report positions, so this scans the text; lines inside multi-line strings are skipped.
 */
export function keyLines(text: string): Map<string, number> {
  const lines = new Map<string, number>();
  let table = '';
  let inMultiline = false;
  text.split(/\r?\n/).forEach((line, i) => {
    const wasInMultiline = inMultiline;
    if ((line.match(/"""|'''/g)?.length ?? 0) % 2 === 1) inMultiline = !inMultiline;
    if (wasInMultiline) return;
    const header = HEADER_RE.exec(line);
    const assign = header ? null : ASSIGN_RE.exec(line);
    if (header) table = dottedKey(header[1]);
    const path = header ? table : assign ? [table, dottedKey(assign[1])].filter(Boolean).join('.') : undefined;
    if (path !== undefined && !lines.has(path)) lines.set(path, i + 1);
  });
  return lines;
}

function dottedKey(text: string): string {
  const parts = text.match(new RegExp(KEY, 'g')) ?? [];
  return parts.map((p) => (p.startsWith('"') ? (JSON.parse(p) as string) : p.replace(/^'|'$/g, ''))).join('.');
}
