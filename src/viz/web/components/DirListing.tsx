import type { DatasetsListResponse } from '../../api.ts';
import { fmtBytes, fmtTime } from '../lib/format.ts';
import { Link } from './Link.tsx';

interface Props {
  /** The listed folder, relative to the data root ('' is the root). */
  path: string;
  listing: DatasetsListResponse;
  /** Where a click on an entry goes: a folder opens it, a shard opens the shard view. */
  hrefFor: (entryPath: string, kind: 'dir' | 'file') => string | null;
}

const joinPath = (dir: string, name: string): string => (dir ? `${dir}/${name}` : name);

/** A folder of the data root: breadcrumbs to its parents, then its entries, folders first. */
export function DirListing({ path, listing, hrefFor }: Props) {
  const parts = path ? path.split('/') : [];
  return (
    <div class="listing">
      <nav class="breadcrumbs" aria-label="folder">
        <Link href={hrefFor('', 'dir')!}>data root</Link>
        {parts.map((name, i) => (
          <span key={i}>
            {' / '}
            <Link href={hrefFor(parts.slice(0, i + 1).join('/'), 'dir')!}>{name}</Link>
          </span>
        ))}
      </nav>
      {listing.entries.length === 0 && <p class="muted">Empty folder.</p>}
      <table class="grid" data-table="listing">
        <tbody>
          {listing.entries.map((e) => {
            const href = hrefFor(joinPath(path, e.name), e.kind);
            return (
              <tr key={e.name}>
                <td class="mono">
                  {href ? <Link href={href}>{e.kind === 'dir' ? `${e.name}/` : e.name}</Link> : e.name}
                </td>
                <td class="num">{e.kind === 'file' ? fmtBytes(e.size) : ''}</td>
                <td>{fmtTime(e.mtime_ms)}</td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}
