import { useLayoutEffect } from 'preact/hooks';
import { Link } from './components/Link.tsx';
import { resetReady } from './data/ready.ts';
import { DatasetsPage } from './pages/DatasetsPage.tsx';
import { ExperimentsPage } from './pages/ExperimentsPage.tsx';
import { GpuPage } from './pages/GpuPage.tsx';
import { NotFoundPage } from './pages/NotFoundPage.tsx';
import { OverviewPage } from './pages/OverviewPage.tsx';
import { RouterPage } from './pages/RouterPage.tsx';
import { RunPage } from './pages/RunPage.tsx';
import { matchRoute, type Route, useLocation } from './router.ts';

const NAV: { href: string; label: string; page: Route['page'] }[] = [
  { href: '/', label: 'Runs', page: 'overview' },
  { href: '/router', label: 'Router', page: 'router' },
  { href: '/gpu', label: 'GPUs', page: 'gpu' },
  { href: '/experiments', label: 'Experiments', page: 'experiments' },
  { href: '/datasets', label: 'Datasets', page: 'datasets' },
];

/**
 * The shell: a top bar and the page of the current route. A page is remounted when its path changes (another run
 * is another page), so it never shows the previous run's data; query changes re-render it in place.
 */
export function App() {
  const { path, query } = useLocation();
  const route = matchRoute(path);
  // Before the page's first commit: a navigation clears the ready hook (loads started by the render hold it).
  useLayoutEffect(resetReady, [path]);
  return (
    <>
      <header class="topbar">
        <Link href="/" class="brand">
          nmoe viz
        </Link>
        <nav>
          {NAV.map((n) => (
            <Link
              key={n.href}
              href={n.href}
              class={n.page === route.page || (n.page === 'overview' && route.page === 'run') ? 'active' : undefined}
            >
              {n.label}
            </Link>
          ))}
        </nav>
      </header>
      <main class="content" key={path}>
        <Page route={route} path={path} query={query} />
      </main>
    </>
  );
}

function Page({ route, path, query }: { route: Route; path: string; query: URLSearchParams }) {
  switch (route.page) {
    case 'overview':
      return <OverviewPage />;
    case 'run':
      return <RunPage run={route.run} query={query} />;
    case 'router':
      return <RouterPage query={query} />;
    case 'gpu':
      return <GpuPage query={query} />;
    case 'experiments':
      return <ExperimentsPage query={query} />;
    case 'datasets':
      return <DatasetsPage query={query} />;
    case 'not-found':
      return <NotFoundPage path={path} />;
  }
}
