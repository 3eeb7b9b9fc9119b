/**
 * NVRTC: compiles the package's .cu kernel files for the device's architecture at run time and caches the cubin
 * on disk, keyed by the source (with its headers), the options (the kernel constants' -D definitions among them), the
 * architecture and the NVRTC version. Template kernels are instantiated through name expressions, so callers name
 * `rmsnorm<bf16>` and get the mangled symbol; the .cu files hold no explicit instantiations.
 * A compile error is a CompileError carrying the kernel file and the compiler log.
 */
import { createHash } from 'node:crypto';
import koffi, { type LibraryHandle } from 'koffi';
import { existsSync, readFileSync, readdirSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { KERNEL_DEFINES } from './kernel-constants.ts';
import { LIBRARIES, loadLibrary } from './libraries.ts';
import { makeDirs } from '../../util/dirs.ts';

export const KERNEL_DIR = fileURLToPath(new URL('./kernels/', import.meta.url));

export class CompileError extends Error {
  override name = 'CompileError';
  constructor(
    readonly file: string,
    readonly log: string,
  ) {
    super(`NVRTC failed to compile ${file}:\n${log}`);
  }
}

let nvrtcLib: ReturnType<typeof bind> | null = null;

/**
 * libnvrtc opens its builtins library (libnvrtc-builtins.so.MAJOR.MINOR) by name at the first compile, through the
 * loader's search path, which does not include a pip wheel's folder; loaded first from libnvrtc's own folder, the
 * later open by name finds it already in the process.
 */
function loadBuiltinsBeside(nvrtcPath: string): LibraryHandle | null {
  if (!nvrtcPath.includes('/')) return null; // a bare soname: the loader's own search found libnvrtc, and finds these
  const dir = dirname(nvrtcPath);
  const builtins = readdirSync(dir).find((f) => /^libnvrtc-builtins\.so\.\d+\.\d+$/.test(f));
  return builtins ? koffi.load(join(dir, builtins)) : null;
}

function bind() {
  const { lib, path } = loadLibrary(LIBRARIES.nvrtc);
  const builtins = loadBuiltinsBeside(path);
  const f = (sig: string) => lib.func(sig);
  return {
    path,
    builtins, // held so that it stays loaded
    version: f('int nvrtcVersion(_Out_ int *major, _Out_ int *minor)'),
    create: f(
      'int nvrtcCreateProgram(_Out_ uint64_t *prog, const char *src, const char *name, int numHeaders, uint64_t headers, uint64_t names)',
    ),
    compile: f('int nvrtcCompileProgram(uint64_t prog, int numOptions, const char **options)'),
    logSize: f('int nvrtcGetProgramLogSize(uint64_t prog, _Out_ uint64_t *size)'),
    log: f('int nvrtcGetProgramLog(uint64_t prog, _Out_ uint8_t *log)'),
    cubinSize: f('int nvrtcGetCUBINSize(uint64_t prog, _Out_ uint64_t *size)'),
    cubin: f('int nvrtcGetCUBIN(uint64_t prog, _Out_ uint8_t *cubin)'),
    addName: f('int nvrtcAddNameExpression(uint64_t prog, const char *expr)'),
    loweredName: f('int nvrtcGetLoweredName(uint64_t prog, const char *expr, _Out_ const char **lowered)'),
    destroy: f('int nvrtcDestroyProgram(_Inout_ uint64_t *prog)'),
    errorString: f('const char *nvrtcGetErrorString(int result)'),
  };
}

function nvrtc() {
  nvrtcLib ??= bind();
  return nvrtcLib;
}

function ok(api: string, code: number): void {
  if (code !== 0) throw new Error(`${api} failed: ${nvrtc().errorString(code)}`);
}

export function nvrtcVersion(): string {
  const major = new Int32Array(1),
    minor = new Int32Array(1);
  ok('nvrtcVersion', nvrtc().version(major, minor));
  return `${major[0]}.${minor[0]}`;
}

export interface CompiledModule {
  cubin: Buffer;
  /** name expression -> mangled symbol */
  symbols: Record<string, string>;
}

/** The file's source and the text of every header it includes, directly or through another header (the cache key). */
function sourceWithHeaders(file: string): { source: string; headerText: string } {
  const source = readFileSync(join(KERNEL_DIR, file), 'utf8');
  const seen = new Set<string>();
  const headers = (text: string): string[] =>
    [...text.matchAll(/#include "([^"]+)"/g)].flatMap((m) => {
      if (seen.has(m[1]!)) return [];
      seen.add(m[1]!);
      const header = readFileSync(join(KERNEL_DIR, m[1]!), 'utf8');
      return [header, ...headers(header)];
    });
  return { source, headerText: headers(source).join('\n') };
}

function cacheDir(): string {
  return process.env.NMOE_CACHE_DIR ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'nmoe', 'kernels');
}

/** Compiles `file` for `arch` (e.g. "sm_90a"), instantiating `names`; reuses the disk cache when it matches. */
export function compileKernels(file: string, names: readonly string[], arch: string): CompiledModule {
  const { source, headerText } = sourceWithHeaders(file);
  const keyed = [`--gpu-architecture=${arch}`, '-std=c++17', '-lineinfo', ...KERNEL_DEFINES];
  const options = [...keyed, `--include-path=${KERNEL_DIR}`];
  const key = createHash('sha256')
    .update([nvrtcVersion(), arch, keyed.join(' '), names.join(','), source, headerText].join('\0'))
    .digest('hex')
    .slice(0, 32);
  const base = join(cacheDir(), `${file.replace(/\.cu$/, '')}-${arch}-${key}`);
  if (existsSync(`${base}.cubin`) && existsSync(`${base}.json`)) {
    return { cubin: readFileSync(`${base}.cubin`), symbols: JSON.parse(readFileSync(`${base}.json`, 'utf8')) };
  }
  const api = nvrtc();
  const prog = new BigUint64Array(1);
  ok('nvrtcCreateProgram', api.create(prog, source, join(KERNEL_DIR, file), 0, 0n, 0n));
  try {
    for (const n of names) ok('nvrtcAddNameExpression', api.addName(prog[0]!, n));
    const rc = api.compile(prog[0]!, options.length, options);
    const logSize = new BigUint64Array(1);
    ok('nvrtcGetProgramLogSize', api.logSize(prog[0]!, logSize));
    const log = Buffer.alloc(Number(logSize[0]));
    ok('nvrtcGetProgramLog', api.log(prog[0]!, log));
    if (rc !== 0) throw new CompileError(join(KERNEL_DIR, file), log.toString('utf8').replace(/\0+$/, ''));
    const size = new BigUint64Array(1);
    ok('nvrtcGetCUBINSize', api.cubinSize(prog[0]!, size));
    const cubin = Buffer.alloc(Number(size[0]));
    ok('nvrtcGetCUBIN', api.cubin(prog[0]!, cubin));
    const symbols: Record<string, string> = {};
    for (const n of names) {
      const lowered: (string | null)[] = [null];
      ok('nvrtcGetLoweredName', api.loweredName(prog[0]!, n, lowered));
      symbols[n] = lowered[0]!;
    }
    writeAtomically(`${base}.cubin`, cubin);
    writeAtomically(`${base}.json`, JSON.stringify(symbols));
    return { cubin, symbols };
  } finally {
    api.destroy(prog);
  }
}

/** Write to a temp file, then rename: concurrent ranks sharing the cache never see half a file. */
function writeAtomically(path: string, data: Buffer | string): void {
  makeDirs(dirname(path));
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, data);
  renameSync(tmp, path);
}
