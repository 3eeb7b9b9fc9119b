import { useState } from 'preact/hooks';

export interface FilterItem {
  key: string;
  label: string;
  /** Right-aligned detail: a count, a step. */
  hint?: string;
}

interface Props {
  /** Test hook and the filter box's label. */
  name: string;
  items: readonly FilterItem[];
  selected: ReadonlySet<string>;
  onToggle: (key: string) => void;
}

/**
 * A checklist with a filter box: every space-separated word must occur in the label (so "layer_03 cv" finds one
 * router tag among hundreds). Selected items stay listed whatever the filter, first.
 */
export function FilterList({ name, items, selected, onToggle }: Props) {
  const [filter, setFilter] = useState('');
  const words = filter.toLowerCase().split(/\s+/).filter(Boolean);
  const matches = (label: string) => words.every((w) => label.toLowerCase().includes(w));
  const shown = [
    ...items.filter((i) => selected.has(i.key)),
    ...items.filter((i) => !selected.has(i.key) && matches(i.label)),
  ];
  return (
    <div class="filter-list" data-list={name}>
      <input
        type="search"
        placeholder={`filter ${items.length} ${name}…`}
        aria-label={`filter ${name}`}
        value={filter}
        onInput={(e) => setFilter(e.currentTarget.value)}
      />
      <ul>
        {shown.map((item) => (
          <li key={item.key}>
            <label title={item.label}>
              <input type="checkbox" checked={selected.has(item.key)} onChange={() => onToggle(item.key)} />
              <span class="filter-label">{item.label}</span>
              {item.hint && <span class="muted filter-hint">{item.hint}</span>}
            </label>
          </li>
        ))}
      </ul>
    </div>
  );
}
