/**
 * A Dockerfile linter for nmoe's images, with the rules of hadolint that matter for them (hadolint itself is not
 * packaged for Debian, and no container engine runs in CI): base images pinned, nothing downloaded unchecked, a
 * non-root user, a health check or a written reason for none, lean apt layers, and a build context that holds every
 * file the Dockerfile copies.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

export interface Instruction {
  keyword: string;
  args: string;
  line: number;
  /** The comment lines right above it, without their `#`. */
  comment: string[];
}

interface Stage {
  from: Instruction;
  name: string | undefined;
  base: string;
  instructions: Instruction[];
}

/** curl or wget given a URL in the same command (not `apt-get install curl`). */
const DOWNLOAD = /\b(curl|wget)\b[^\n;&|]*https?:\/\//;
const PIPED_TO_SHELL = new RegExp(`${DOWNLOAD.source}[^|;&]*\\|\\s*(ba)?sh\\b`);

/** Instructions whose arguments are shell code (or JSON of it), where `#` may legitimately appear. */
const SHELL_FORMS = new Set(['RUN', 'CMD', 'ENTRYPOINT', 'HEALTHCHECK']);

/** `FROM [--platform=…] image [AS name]` */
const FROM_ARGS = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i;

/** Instructions with their continuation lines joined; a parser directive or comment is no instruction. */
export function parseDockerfile(text: string): Instruction[] {
  const instructions: Instruction[] = [];
  let comment: string[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line.startsWith('#')) {
      comment.push(line.replace(/^#\s?/, ''));
      continue;
    }
    if (line === '') {
      comment = [];
      continue;
    }
    const start = i;
    let joined = line;
    while (joined.endsWith('\\') && i + 1 < lines.length)
      joined = `${joined.slice(0, -1).trimEnd()} ${lines[++i]!.trim()}`;
    const [, keyword = '', args = ''] = /^(\S+)\s*(.*)$/.exec(joined) ?? [];
    instructions.push({ keyword: keyword.toUpperCase(), args, line: start + 1, comment });
    comment = [];
  }
  return instructions;
}

function stages(instructions: Instruction[]): Stage[] {
  const out: Stage[] = [];
  for (const ins of instructions) {
    if (ins.keyword === 'FROM') {
      const [, base = '', name] = FROM_ARGS.exec(ins.args) ?? [];
      out.push({ from: ins, name, base, instructions: [] });
    } else {
      out.at(-1)?.instructions.push(ins);
    }
  }
  return out;
}

/** The last value of an instruction in a stage or, failing that, in the stage it is built FROM. */
function inherited(all: Stage[], stage: Stage, keyword: string): Instruction | undefined {
  const own = stage.instructions.filter((i) => i.keyword === keyword).at(-1);
  if (own) return own;
  const parent = all.find((s) => s.name === stage.base);
  return parent ? inherited(all, parent, keyword) : undefined;
}

/**
 * Every rule's findings, `file:line: problem. Fix: …`; none for a clean Dockerfile. A script that the Dockerfile
 * copies in from `repoRoot` and runs is held to the same download rule as a RUN line. `contextHas` says whether the
 * build context (after .dockerignore) holds a path.
 */
export function lintDockerfile(
  file: string,
  text: string,
  repoRoot: string,
  contextHas: (path: string) => boolean,
): string[] {
  const instructions = parseDockerfile(text);
  const all = stages(instructions);
  const problems: string[] = [];
  const at = (ins: Instruction, problem: string) => problems.push(`${file}:${ins.line}: ${problem}`);
  const copied = new Map<string, string>(); // path in the image -> path in the repository
  const stagesSoFar = new Set<string>();

  for (const ins of instructions) {
    if (ins.keyword === 'FROM') {
      const [, image = '', name] = FROM_ARGS.exec(ins.args) ?? [];
      const fromStage = stagesSoFar.has(image);
      if (name) stagesSoFar.add(name);
      if (fromStage) continue;
      const tag = image.includes('@sha256:') ? 'digest' : /:([^/:]+)$/.exec(image)?.[1];
      if (tag === undefined)
        at(
          ins,
          `FROM ${image} has no tag, so it means whatever :latest is on the day of the build. Fix: pin a version tag or a digest (@sha256:…)`,
        );
      else if (tag === 'latest')
        at(ins, `FROM ${image} uses :latest, which moves. Fix: pin a version tag or a digest (@sha256:…)`);
    }
    if (!SHELL_FORMS.has(ins.keyword) && /\s#/.test(ins.args)) {
      at(
        ins,
        `${ins.keyword} ${ins.args}: a # after an instruction is no comment in a Dockerfile, it becomes part of the value. Fix: move the comment to a line of its own above`,
      );
    }
    if (ins.keyword === 'ADD')
      at(
        ins,
        'ADD fetches URLs and unpacks archives unchecked. Fix: COPY local files; download with curl and check the SHA-256',
      );
    if (ins.keyword === 'COPY' && !ins.args.startsWith('--from=')) {
      const parts = ins.args
        .replace(/--\S+\s+/g, '')
        .replace(/^\[|\]$/g, '')
        .split(/\s+/);
      const target = parts.pop()!;
      for (const source of parts) {
        if (!existsSync(join(repoRoot, source)))
          at(
            ins,
            `COPY ${source}: no such file in the repository. Fix: copy an existing path, relative to the repository root`,
          );
        else if (!contextHas(source))
          at(
            ins,
            `COPY ${source}: .dockerignore leaves it out of the build context. Fix: add !${source} to .dockerignore`,
          );
        copied.set(target, source);
      }
    }
    if (ins.keyword === 'RUN') {
      const scripts = [...copied]
        .filter(([inImage]) => ins.args.includes(inImage))
        .map(([, source]) => readFileSync(join(repoRoot, source), 'utf8'));
      for (const code of [ins.args, ...scripts]) {
        if (DOWNLOAD.test(code) && !/sha256sum (--check|-c)\b/.test(code)) {
          at(
            ins,
            "downloads with curl or wget without checking a SHA-256. Fix: pin the file's hash and `sha256sum --check` it before use",
          );
        }
        if (PIPED_TO_SHELL.test(code))
          at(ins, 'pipes a download into a shell. Fix: download, check the SHA-256, then run');
      }
      if (/apt-get install/.test(ins.args)) {
        if (!ins.args.includes('--no-install-recommends'))
          at(ins, 'apt-get install without --no-install-recommends pulls in packages nobody asked for. Fix: add it');
        if (!ins.args.includes('rm -rf /var/lib/apt/lists/*'))
          at(
            ins,
            'apt-get install leaves the package lists in the layer. Fix: end the RUN with rm -rf /var/lib/apt/lists/*',
          );
      }
    }
  }

  // The stages people run: those with an entrypoint of their own or inherited.
  for (const stage of all.filter((s) => inherited(all, s, 'ENTRYPOINT'))) {
    const { from } = stage;
    const name = stage.name ?? `of line ${from.line}`;
    const user = inherited(all, stage, 'USER');
    if (!user) at(from, `stage ${name} runs as root: it sets no USER. Fix: create a user and switch to it with USER`);
    else if (/^(root|0)(:|$)/.test(user.args))
      at(user, `stage ${name} ends as root (USER ${user.args}). Fix: switch back to the unprivileged user`);
    const health = inherited(all, stage, 'HEALTHCHECK');
    if (!health)
      at(from, `stage ${name} has no HEALTHCHECK. Fix: add one, or HEALTHCHECK NONE with a comment saying why`);
    else if (health.args.trim() === 'NONE' && health.comment.join('').trim() === '') {
      at(
        health,
        `HEALTHCHECK NONE without a reason. Fix: say in a comment right above it why the image has no health check`,
      );
    }
  }
  return problems;
}

/**
 * Whether .dockerignore keeps a path (relative to the context root) in the build context, by Docker's rules: a
 * pattern excludes what it matches and everything below it, `!` takes a match back in, and the last match wins.
 * Globs: `*` and `?` within one path segment, `**` across segments.
 */
export function dockerignoreFilter(text: string): (path: string) => boolean {
  const patterns = text
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'))
    .map((line) => {
      const negate = line.startsWith('!');
      const glob = (negate ? line.slice(1) : line).replace(/^\/+|\/+$/g, '');
      const source = glob
        .replace(/[.+^${}()|[\]\\]/g, '\\$&')
        .replace(/\*\*/g, '\0')
        .replace(/\*/g, '[^/]*')
        .replace(/\?/g, '[^/]')
        .replace(/\0/g, '.*');
      return { negate, regex: new RegExp(`^${source}$`) };
    });
  return (path) => {
    const segments = path.replace(/^\.\/|\/+$/g, '').split('/');
    const prefixes = segments.map((_, i) => segments.slice(0, i + 1).join('/'));
    let kept = true;
    for (const { negate, regex } of patterns) if (prefixes.some((p) => regex.test(p))) kept = negate;
    return kept;
  };
}
