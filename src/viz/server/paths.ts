/**
 * Every path a request names stays inside its root (the data root, the metrics dir): relative, no `..` segment, no
 * NUL byte, and its real path (symlinks followed) under the root's real path. Anything else is a 400 before the
 * file is touched; a path that does not exist is a 404.
 */
import { realpathSync } from 'node:fs';
import { isAbsolute, resolve, sep } from 'node:path';
import { badRequest, notFound } from './errors.ts';

/** The real path of `rel` under `root`; `what` names the parameter in errors ("path", "run"). */
export function confine(root: string, rel: string, what: string): string {
  if (rel.includes('\0')) throw badRequest(`${what} contains a NUL byte`);
  if (isAbsolute(rel) || /^[A-Za-z]:/.test(rel))
    throw badRequest(`${what}=${JSON.stringify(rel)} is absolute; give it relative to the root (${root})`);
  if (rel.split(/[\\/]/).includes('..'))
    throw badRequest(`${what}=${JSON.stringify(rel)} contains '..'; paths stay inside the root (${root})`);
  const realRoot = realOrNotFound(root, `the root ${root} does not exist`);
  const real = realOrNotFound(resolve(realRoot, rel), `${what}=${JSON.stringify(rel)} does not exist under ${root}`);
  if (!isInside(realRoot, real))
    throw badRequest(`${what}=${JSON.stringify(rel)} leads outside the root (${root}) through a symlink`);
  return real;
}

/** The real path of `path` when it exists and lies inside `realRoot` (a real path itself); null otherwise. */
export function realInside(realRoot: string, path: string): string | null {
  try {
    const real = realpathSync(path);
    return isInside(realRoot, real) ? real : null;
  } catch {
    return null;
  }
}

export const isInside = (root: string, path: string): boolean =>
  path === root || path.startsWith(root.endsWith(sep) ? root : root + sep);

function realOrNotFound(path: string, message: string): string {
  try {
    return realpathSync(path);
  } catch {
    throw notFound(message);
  }
}
