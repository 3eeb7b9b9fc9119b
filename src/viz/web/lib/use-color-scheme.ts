import { useEffect, useState } from 'preact/hooks';

const query = matchMedia('(prefers-color-scheme: dark)');

/** 'dark' or 'light', following the system; canvases repaint with it since CSS cannot recolour them. */
export function useColorScheme(): 'dark' | 'light' {
  const [dark, setDark] = useState(query.matches);
  useEffect(() => {
    const onChange = () => setDark(query.matches);
    query.addEventListener('change', onChange);
    return () => query.removeEventListener('change', onChange);
  }, []);
  return dark ? 'dark' : 'light';
}
