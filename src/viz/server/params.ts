/**
 * Query parameters, checked before anything is read: integers within their documented range (out-of-range values
 * are refused, never clamped silently), run names, tags and repeated parameters with a cap on how many. Every
 * refusal is a 400 naming the parameter, the value given and what is allowed.
 */
import type { Context } from 'hono';
import { badRequest } from './errors.ts';

/** Run directory names as the reference's NVIZ accepts them: `^[A-Za-z0-9._-]+$`, except "." and "..". */
export const isRunName = (name: string): boolean => /^[A-Za-z0-9._-]+$/.test(name) && !/^\.+$/.test(name);
const TAG = /^[\x20-\x7e]{1,200}$/;

/** The value as given, shortened so that an error never echoes a huge input back. */
const short = (raw: string) => (raw.length > 40 ? `${raw.slice(0, 40)}...` : raw);
const shown = (raw: string) => JSON.stringify(short(raw));

export interface IntRange {
  min: number;
  max: number;
  /** Used when the parameter is absent; without it the parameter is required. */
  def?: number;
}

function toInt(name: string, raw: string, r: IntRange): number {
  const allowed = `allowed: an integer in ${r.min}..${r.max}${r.def === undefined ? '' : ` (default ${r.def})`}`;
  if (!/^-?\d+$/.test(raw)) throw badRequest(`${name}=${shown(raw)} is not an integer; ${allowed}`);
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < r.min || n > r.max)
    throw badRequest(`${name}=${short(raw)} is out of range; ${allowed}`);
  return n;
}

export function intParam(c: Context, name: string, r: IntRange): number {
  const raw = c.req.query(name);
  if (raw === undefined || raw === '') {
    if (r.def === undefined) throw badRequest(`${name} is required: an integer in ${r.min}..${r.max}`);
    return r.def;
  }
  return toInt(name, raw, r);
}

/** An integer parameter with no default: null when absent. */
export function optionalIntParam(c: Context, name: string, r: Omit<IntRange, 'def'>): number | null {
  const raw = c.req.query(name);
  return raw === undefined || raw === '' ? null : toInt(name, raw, r);
}

export function stringParam(c: Context, name: string, opts: { required: true }): string;
export function stringParam(c: Context, name: string, opts?: { required?: false }): string | null;
export function stringParam(c: Context, name: string, opts: { required?: boolean } = {}): string | null {
  const raw = c.req.query(name);
  if (raw === undefined || raw === '') {
    if (opts.required) throw badRequest(`${name} is required`);
    return null;
  }
  if (raw.includes('\0')) throw badRequest(`${name} contains a NUL byte`);
  if (raw.length > 4096) throw badRequest(`${name} is ${raw.length} characters long; at most 4096`);
  return raw;
}

export function checkRunName(run: string, name = 'run'): string {
  if (!isRunName(run)) {
    throw badRequest(
      `${name}=${shown(run)} is not a run name: run names are directory names made of letters, digits, '.', '_' and '-'`,
    );
  }
  return run;
}

export const runParam = (c: Context): string => checkRunName(stringParam(c, 'run', { required: true }));

/** A repeated parameter (`tag=a&tag=b`), 1..max values, each checked by `check`. */
export function listParam(c: Context, name: string, max: number, check: (value: string) => string): string[] {
  const values = c.req.queries(name) ?? [];
  if (!values.length) throw badRequest(`${name} is required (repeat it for several: ${name}=a&${name}=b)`);
  if (values.length > max) throw badRequest(`${values.length} values of ${name} given; at most ${max} per request`);
  return values.map(check);
}

export function checkTag(tag: string): string {
  if (!TAG.test(tag))
    throw badRequest(`tag=${shown(tag)} is not a tag: 1..200 printable ASCII characters, e.g. train/loss`);
  return tag;
}

/** A parameter that takes one of a fixed set of words. */
export function enumParam<T extends string>(c: Context, name: string, values: readonly T[], def: T): T {
  const raw = c.req.query(name) ?? def;
  if (!(values as readonly string[]).includes(raw))
    throw badRequest(`${name}=${shown(raw)} is not one of ${values.join(', ')}`);
  return raw as T;
}
