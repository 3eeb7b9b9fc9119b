/**
 * Every relative link in README.md and docs/*.md points at a file that exists, and every `#anchor` at a heading of
 * that file (GitHub's heading ids), so moving a section between manuals cannot leave a link behind.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const PAGES = [
  'README.md',
  ...readdirSync(join(ROOT, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .map((f) => `docs/${f}`),
];

const withoutFences = (markdown: string) => markdown.replace(/^```[^\n]*\n[\s\S]*?^```$/gm, '');

/** The text outside fenced code blocks and inline code, where a `[text](target)` is a link. */
const prose = (markdown: string) => withoutFences(markdown).replace(/`[^`\n]*`/g, '');

/** GitHub's ids for a page's headings: lower case, punctuation dropped, spaces as hyphens, repeats numbered. */
function headingIds(markdown: string): Set<string> {
  const ids = new Set<string>();
  for (const [, heading] of withoutFences(markdown)
    .replace(/`/g, '')
    .matchAll(/^#{1,6} (.+)$/gm)) {
    const base = heading
      .trim()
      .toLowerCase()
      .replace(/[^\p{L}\p{N}\s_-]/gu, '')
      .replace(/\s/g, '-');
    let id = base;
    for (let n = 1; ids.has(id); n++) id = `${base}-${n}`;
    ids.add(id);
  }
  return ids;
}

/** Each relative link in `text`, the content of `page`, that leads nowhere, as `page: target (why)`. */
function brokenLinks(page: string, text: string): string[] {
  const broken: string[] = [];
  for (const [, target] of prose(text).matchAll(/\]\(([^)\s]+)\)/g)) {
    if (/^[a-z]+:/i.test(target)) continue; // https:, mailto: and the like
    const [path, anchor] = target.split('#');
    const file = path ? join(dirname(join(ROOT, page)), path) : join(ROOT, page);
    if (path && !existsSync(file)) {
      broken.push(`${page}: ${target} (no file ${relative(ROOT, file)})`);
    } else if (
      anchor !== undefined &&
      file.endsWith('.md') &&
      !headingIds(path ? readFileSync(file, 'utf8') : text).has(anchor)
    ) {
      broken.push(`${page}: ${target} (no heading #${anchor} in ${relative(ROOT, file)})`);
    }
  }
  return broken;
}

describe('links in README.md and docs/', () => {
  it.each(PAGES)('%s: every relative link reaches a file and heading that exist', (page) => {
    expect(brokenLinks(page, readFileSync(join(ROOT, page), 'utf8'))).toEqual([]);
  });

  it('finds a missing file and a missing heading, and reads headings as GitHub names them', () => {
    const page =
      '[a](nope.md) [b](gpu.md#no-such) [c](gpu.md#precision) [d](#here) [e](#gone) [f](https://x.org)\n## Here\n';
    expect(brokenLinks('docs/x.md', page)).toEqual([
      'docs/x.md: nope.md (no file docs/nope.md)',
      'docs/x.md: gpu.md#no-such (no heading #no-such in docs/gpu.md)',
      'docs/x.md: #gone (no heading #gone in docs/x.md)',
    ]);
    expect(headingIds('# A `b` (c / d)\n## A b c d\n## A b c d\n```\n# not a heading\n```')).toEqual(
      new Set(['a-b-c--d', 'a-b-c-d', 'a-b-c-d-1']),
    );
    expect(prose('[x](a.md) `[y](b.md)`\n```\n[z](c.md)\n```\n')).toBe('[x](a.md) \n\n');
  });
});
