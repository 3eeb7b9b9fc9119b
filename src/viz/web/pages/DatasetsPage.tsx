import { DirListing } from '../components/DirListing.tsx';
import { DocumentView } from '../components/DocumentView.tsx';
import { FlowView } from '../components/FlowView.tsx';
import { GradedSet } from '../components/GradedSet.tsx';
import { LoadState } from '../components/LoadState.tsx';
import { ManifestView } from '../components/ManifestView.tsx';
import { ShardStats } from '../components/ShardStats.tsx';
import { TokenWindow } from '../components/TokenWindow.tsx';
import { endpoints } from '../data/endpoints.ts';
import { useApi } from '../data/use-api.ts';
import { navigate, withQuery } from '../router.ts';

const intParam = (query: URLSearchParams, key: string) => Math.max(0, Math.floor(Number(query.get(key)) || 0));

/**
 * `/datasets?path=DIR[&shard=S&offset=N&doc=I][&graded=G]`: a folder of the data root; its manifest when it holds
 * one; a flow's plan against its tree when the folder is `flows/<flow>`; a chosen shard: statistics, a window of raw
 * ids, and documents decoded back to text; a chosen HYDRA sidecar (`.jsonl`): its decisions and score histograms.
 */
export function DatasetsPage({ query }: { query: URLSearchParams }) {
  const path = query.get('path') ?? '';
  const shard = query.get('shard');
  const graded = query.get('graded');
  const flowName = /^flows\/([^/]+)\/?$/.exec(path)?.[1] ?? null;
  const listing = useApi(endpoints.datasets(path));
  const hasManifest = listing.data?.entries.some((e) => e.kind === 'file' && e.name === 'manifest.json') ?? false;
  const manifest = useApi(hasManifest ? endpoints.manifest(path) : null);
  // Shard statistics count EOS and out-of-vocabulary ids against the manifest's tokenizer, so they wait for it.
  const manifestSettled =
    listing.data !== undefined && (!hasManifest || manifest.data !== undefined || manifest.error !== undefined);
  const vocab = manifest.data && { vocab_size: manifest.data.vocab_size, eos_token_id: manifest.data.eos_token_id };
  const stats = useApi(shard && manifestSettled ? endpoints.shardStats(shard, vocab) : null);
  // A flow's plan needs the server's TOMLs: asked only for a flow they plan, so no page shows an error for it.
  const flows = useApi(flowName ? endpoints.flows() : null);
  const planned = flows.data?.flows.some((f) => f.name === flowName && f.planned) ?? false;
  const flow = useApi(planned && flowName ? endpoints.flow(flowName) : null);
  const sidecar = useApi(graded ? endpoints.hydra(graded) : null);

  const go = (changes: Record<string, string | null>, replace = false) =>
    navigate(withQuery('/datasets', changes), { replace });
  const openShard = (s: string) => withQuery('/datasets', { shard: s, offset: null, doc: null });
  const openFolder = (dir: string) =>
    withQuery('/datasets', { path: dir, shard: null, offset: null, doc: null, graded: null });
  const hrefFor = (entry: string, kind: 'dir' | 'file') =>
    kind === 'dir'
      ? openFolder(entry)
      : entry.endsWith('.npy')
        ? openShard(entry)
        : entry.endsWith('.jsonl')
          ? withQuery('/datasets', { graded: entry })
          : null;

  return (
    <section>
      <header class="page-head">
        <h1>Datasets</h1>
      </header>
      <LoadState state={listing} what="the folder" />
      {listing.data && <DirListing path={path} listing={listing.data} hrefFor={hrefFor} />}
      {hasManifest && <LoadState state={manifest} what="the manifest" />}
      {manifest.data && <ManifestView manifest={manifest.data} shardHref={openShard} />}
      {flowName && flows.data && !planned && (
        <p class="muted">
          No plan for flow {flowName}: start the server as `nmoe viz --mixture M --flow-profiles F` with the TOMLs that
          define [flow.{flowName}].
        </p>
      )}
      {flowName && <LoadState state={planned ? flow : flows} what="the flow" />}
      {flow.data && <FlowView flow={flow.data} folderHref={openFolder} />}
      {graded && <LoadState state={sidecar} what="the graded set" />}
      {sidecar.data && <GradedSet sidecar={sidecar.data} />}
      {shard && (
        <div class="shard" data-shard={shard}>
          <h2 class="mono">{shard}</h2>
          {manifestSettled && <LoadState state={stats} what="shard statistics" />}
          {stats.data && (
            <>
              <ShardStats stats={stats.data} />
              <h3>Tokens</h3>
              <TokenWindow
                shard={shard}
                offset={intParam(query, 'offset')}
                numTokens={stats.data.num_tokens}
                eosTokenId={vocab?.eos_token_id}
                onOffset={(o) => go({ offset: String(o) }, true)}
              />
              <h3>Documents</h3>
              {stats.data.has_index ? (
                <DocumentView shard={shard} doc={intParam(query, 'doc')} onDoc={(d) => go({ doc: String(d) }, true)} />
              ) : (
                <p class="muted">No .idx beside this shard: `nmoe data regenerate-index` rebuilds it.</p>
              )}
            </>
          )}
        </div>
      )}
    </section>
  );
}
