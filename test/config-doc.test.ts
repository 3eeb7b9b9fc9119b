/** docs/config.md's key reference is generated from the schema: the committed file must be what the generator writes now. */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { CONFIG_DOC, keyReference, renderConfigDoc } from '../tools/config-doc.ts';
import { RANGES } from '../src/config/ranges.ts';
import { FIELDS } from '../src/config/schema.ts';

describe('docs/config.md', () => {
  const committed = readFileSync(CONFIG_DOC, 'utf8');

  it('holds the key reference as tools/config-doc.ts writes it from the schema', () => {
    expect(
      committed === renderConfigDoc(committed),
      'docs/config.md is stale: run `node --import tsx tools/config-doc.ts` and commit it',
    ).toBe(true);
  });

  it('has a row for every key, with its range where it has one', () => {
    const rows = keyReference()
      .split('\n')
      .filter((l) => l.startsWith('| `'));
    expect(rows).toHaveLength(Object.keys(FIELDS).length);
    expect(rows.find((r) => r.startsWith('| `n_routed_experts` |'))).toContain('| > 0 and <= 512 |');
    expect(rows.find((r) => r.startsWith('| `adam_beta2` |'))).toMatch(/\| >= 0 and < 1 \|/);
    for (const key of Object.keys(RANGES))
      expect(
        rows.some((r) => r.startsWith(`| \`${key}\` |`)),
        key,
      ).toBe(true);
  });
});
