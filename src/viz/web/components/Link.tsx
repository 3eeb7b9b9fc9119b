import type { ComponentChildren } from 'preact';
import { navigate } from '../router.ts';

interface Props {
  href: string;
  class?: string;
  title?: string;
  children: ComponentChildren;
}

/** An <a> that navigates in the app; modified clicks (new tab, new window) keep the browser's behaviour. */
export function Link({ href, children, ...rest }: Props) {
  const onClick = (e: MouseEvent) => {
    if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    navigate(href);
  };
  return (
    <a href={href} onClick={onClick} {...rest}>
      {children}
    </a>
  );
}
