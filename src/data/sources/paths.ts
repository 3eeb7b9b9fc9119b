/**
 * Expands --paths arguments into a sorted, de-duplicated file list, as the reference's `sorted(glob(pattern))` does:
 * a file stands for itself, a folder for the files below it with the source's extensions, and a pattern may use `*`,
 * `?` and `**` (for when the shell did not expand it). Hidden files and folders are skipped, as Python's glob does.
 */
import { readdirSync, statSync } from 'node:fs';
import { join, normalize } from 'node:path';
import { dataError } from '../errors.ts';

function walk(dir: string, out: string[]): void {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.name.startsWith('.')) continue;
    const p = join(dir, e.name);
    if (e.isDirectory()) walk(p, out);
    else if (e.isFile()) out.push(p);
  }
}

/** Every (non-hidden) file below `dir`, sorted. */
export function listFiles(dir: string): string[] {
  const out: string[] = [];
  walk(dir, out);
  return out.sort();
}

function globToRegExp(pattern: string): RegExp {
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '*' && pattern[i + 1] === '*') {
      re += pattern[i + 2] === '/' ? '(?:.*/)?' : '.*';
      i += pattern[i + 2] === '/' ? 2 : 1;
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

/**
 * Files named by `patterns`; `extensions` filter what a folder contributes (e.g. [".jsonl", ".jsonl.gz"]). `option`
 * names the setting the patterns came from, for error messages.
 */
export function expandPaths(patterns: string[], extensions: string[], option = '--paths'): string[] {
  const files = new Set<string>();
  for (const pattern of patterns) {
    if (/[*?]/.test(pattern)) {
      const glob = normalize(pattern);
      const base = glob.slice(0, glob.search(/[*?]/)).replace(/[^/]*$/, '') || '.';
      const all: string[] = [];
      try {
        walk(base, all);
      } catch {
        // a base folder that does not exist matches nothing
      }
      const re = globToRegExp(glob);
      for (const f of all) if (re.test(f)) files.add(f);
      continue;
    }
    let isDir: boolean;
    try {
      isDir = statSync(pattern).isDirectory();
    } catch {
      throw dataError(
        `input not found: ${pattern}`,
        pattern,
        `check ${option} (files, folders or quoted glob patterns)`,
      );
    }
    if (!isDir) files.add(pattern);
    else {
      const all: string[] = [];
      walk(pattern, all);
      for (const f of all) if (extensions.some((e) => f.endsWith(e))) files.add(f);
    }
  }
  if (files.size === 0) {
    throw dataError(
      `no ${extensions.join('/')} files in ${patterns.join(' ')}`,
      patterns.join(' '),
      `check ${option}: give files, folders holding ${extensions.join('/')} files, or glob patterns that match some`,
    );
  }
  return [...files].sort();
}
