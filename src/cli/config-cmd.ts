/**
 * `nmoe config show` prints a resolved config (file + environment + command line) as TOML, marking where every
 * non-default value came from; `nmoe config check` validates config files, e.g. all presets before a release.
 */
import { InvalidArgumentError, type Command } from 'commander';
import pc from 'picocolors';
import { canonicalJson, configFingerprint } from '../config/fingerprint.ts';
import { loadConfig, type LoadedConfig } from '../config/load.ts';
import { CONFIG_KEYS, FIELDS, SECTIONS, tomlLiteral } from '../config/schema.ts';
import { unimplementedWarnings } from '../config/unimplemented.ts';
import { ConfigError } from '../config/validate.ts';
import { UserError } from '../util/errors.ts';

export function registerConfigCommand(program: Command): void {
  const config = program.command('config').description('Inspect and validate training configs (TOML).');

  config
    .command('show')
    .description('Print the resolved config as TOML: defaults < file < NMOE_* environment < --key=value overrides.')
    .argument('<file>', 'config TOML, e.g. configs/tiny.toml')
    .argument('[overrides...]', 'overrides: --key=value, --kebab-key=value, --table.key=value, --flag, --no-flag')
    .option('--json', 'print JSON (config, origin of each value, fingerprint) instead of TOML')
    .allowUnknownOption()
    .addHelpText('after', '\nExample:\n  nmoe config show configs/tiny.toml --steps=50 --batch-size=4 --no-resume')
    .action((file: string, overrides: string[], opts: { json?: boolean }) => {
      // Commander puts unknown options and operands in one list, in order; split them back apart.
      const args = [file, ...overrides];
      const files = args.filter((a) => !a.startsWith('-'));
      if (files.length !== 1) {
        throw new UserError(
          `config show needs exactly one config file, got ${files.length} (${files.join(' ') || 'none'}). ` +
            'Fix: give one file and write overrides as --key=value (e.g. --steps=5, not --steps 5).',
        );
      }
      const loaded = loadConfig(files[0], { overrides: args.filter((a) => a.startsWith('-')) });
      process.stdout.write(opts.json ? showJson(loaded) : showToml(loaded));
    });

  config
    .command('check')
    .description('Validate config files; exits with code 2 if any of them is invalid.')
    .argument('<files...>', 'config TOML files')
    .option('--world-size <n>', 'ranks the run will use (default: $WORLD_SIZE, else 1)', positiveInt)
    .action((files: string[], opts: { worldSize?: number }) => {
      let failed = 0;
      for (const file of files) {
        try {
          const loaded = loadConfig(file, { worldSize: opts.worldSize });
          process.stdout.write(
            `${pc.green('ok')}   ${file}  fingerprint ${configFingerprint(loaded.config).slice(0, 12)}\n`,
          );
          for (const line of unimplementedWarnings(loaded))
            process.stdout.write(`${pc.yellow('warn')} ${file}  ${line}\n`);
        } catch (err) {
          if (!(err instanceof ConfigError)) throw err;
          failed++;
          for (const line of err.errors) process.stdout.write(`${pc.red('FAIL')} ${file}  ${line}\n`);
        }
      }
      if (failed) throw new UserError(`${failed} of ${files.length} configs failed`);
    });
}

function positiveInt(text: string): number {
  if (!/^\d+$/.test(text) || Number(text) < 1) throw new InvalidArgumentError('must be a positive integer.');
  return Number(text);
}

/** Valid TOML (null fields become comments, tables inline) so the output can be saved and loaded again. */
function showToml({ config, path, origin }: LoadedConfig): string {
  const out = [`# nmoe config ${path}: every field; a trailing comment says where a non-default value came from`];
  for (const section of SECTIONS) {
    out.push('', `# --- ${section} ---`);
    const rows = CONFIG_KEYS.filter((k) => FIELDS[k].section === section).map((key) => {
      const value = config[key];
      const text = value === null ? `# ${key} is unset` : `${key} = ${tomlLiteral(value, FIELDS[key].type)}`;
      const changed = canonicalJson(value) !== canonicalJson(FIELDS[key].default);
      return [text, changed ? origin[key] : undefined] as const;
    });
    const width = Math.max(...rows.map(([text]) => text.length));
    for (const [text, from] of rows) out.push(from ? `${text.padEnd(width)}  # ${from}` : text);
  }
  out.push('', `# fingerprint ${configFingerprint(config)} (sha256 of the fields that change the training math)`, '');
  return out.join('\n');
}

function showJson({ config, path, origin }: LoadedConfig): string {
  return `${JSON.stringify({ path, fingerprint: configFingerprint(config), config, origin }, null, 2)}\n`;
}
