/**
 * Reads the `__global__` kernel definitions of a CUDA file (template parameters, parameter names and types) and
 * checks a kernel table (src/tensor/cuda/kernel-table.ts) against them, so a table that drifts from its .cu fails.
 */
import type { KernelFile, ParamType } from '../../src/tensor/cuda/kernel-table.ts';

export interface CudaKernel {
  name: string;
  /** Template parameter names, or null for a plain kernel. */
  template: string[] | null;
  params: { name: string; type: string }[];
}

/** Splits at top-level commas (a parameter such as `const AdamTensor<P, S>* t` holds one). */
function splitTopLevel(text: string): string[] {
  const parts: string[] = [];
  let depth = 0,
    start = 0;
  for (let i = 0; i < text.length; i++) {
    if (text[i] === '<' || text[i] === '(') depth++;
    else if (text[i] === '>' || text[i] === ')') depth--;
    else if (text[i] === ',' && depth === 0) {
      parts.push(text.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(text.slice(start));
  return parts.map((p) => p.trim()).filter((p) => p !== '');
}

/** The table type of a C++ parameter type: any pointer is 'ptr'; a struct by value keeps its name. */
function tableType(cpp: string): string {
  if (cpp.includes('*')) return 'ptr';
  const bare = cpp
    .replace(/\b(const|__grid_constant__|__restrict__)\b/g, '')
    .replace(/\s+/g, ' ')
    .trim();
  const scalars: Record<string, string> = {
    int: 'i32',
    unsigned: 'u32',
    'unsigned int': 'u32',
    long: 'i64',
    'long long': 'i64',
    float: 'f32',
  };
  return scalars[bare] ?? bare;
}

export function parseKernels(source: string): CudaKernel[] {
  const text = source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/.*$/gm, '');
  const definition =
    /(?:template\s*<([^>]*)>\s*)?(?:extern\s+"C"\s+)?__global__\s+void\s+((?:__\w+__\s*\([^)]*\)\s*)*)(\w+)\s*\(([^{;]*)\)\s*\{/g;
  return [...text.matchAll(definition)].map((m) => ({
    name: m[3]!,
    template: m[1] === undefined ? null : splitTopLevel(m[1]).map((p) => p.split(/\s+/).at(-1)!),
    params: splitTopLevel(m[4]!).map((p) => {
      const name = /(\w+)\s*$/.exec(p)![1]!;
      return { name, type: tableType(p.slice(0, p.length - name.length)) };
    }),
  }));
}

/** Every way `table` disagrees with the kernels `source` defines (empty when they agree). */
export function tableProblems(table: KernelFile, source: string): string[] {
  const problems: string[] = [];
  const defined = new Map(parseKernels(source).map((k) => [k.name, k]));
  for (const name of defined.keys())
    if (!(name in table.kernels)) problems.push(`${name}: defined in ${table.file}, missing from its table`);
  for (const [name, spec] of Object.entries(table.kernels)) {
    const k = defined.get(name);
    if (!k) {
      problems.push(`${name}: in the table, not defined in ${table.file}`);
      continue;
    }
    const cu = k.params.map((p) => `${p.type} ${p.name}`).join(', ');
    const ts = spec.params.map(([n, t]: readonly [string, ParamType]) => `${t} ${n}`).join(', ');
    if (cu !== ts) problems.push(`${name}: ${table.file} takes (${cu}), the table says (${ts})`);
    const template = (spec.template ?? null)?.join(', ') ?? null;
    if ((k.template?.join(', ') ?? null) !== template)
      problems.push(
        `${name}: template <${k.template?.join(', ') ?? ''}> in ${table.file}, <${template ?? ''}> in the table`,
      );
    for (const args of [...(spec.instances ?? []), ...(spec.reachable ?? [])])
      if (splitTopLevel(args).length !== (k.template?.length ?? 0))
        problems.push(`${name}<${args}>: ${k.template?.length ?? 0} template parameters in ${table.file}`);
  }
  return problems;
}
