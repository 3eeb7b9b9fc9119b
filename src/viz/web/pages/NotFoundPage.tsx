import { Link } from '../components/Link.tsx';

export function NotFoundPage({ path }: { path: string }) {
  return (
    <section>
      <h1>Not found</h1>
      <p>
        The dashboard has no page at <code>{path}</code>. <Link href="/">All runs</Link>
      </p>
    </section>
  );
}
