/**
 * Pass 5: import the adaptor functions the job uses, and re-export the adaptor.
 *
 * Job code calls adaptor functions (`fn`, `get`, `each`) without importing them. Every free
 * identifier (see scope.mjs) that an adaptor exports is imported from it; `export * from` the
 * adaptor then exposes its `execute`, which the runtime uses as the reducer.
 *
 * Several adaptors: each name is imported once, from the first adaptor (in list order) that
 * exports it, and only the first adaptor that anything is imported from gets `export *`.
 * OpenFn imports a shared name from every adaptor (a duplicate binding: a link-time
 * SyntaxError) and re-exports all of them, which makes `execute` ambiguous so it silently
 * vanishes; one `export *` keeps the first adaptor's `execute` in charge.
 *
 * An adaptor given without an `exports` list gets every free name that is not a global of
 * the job sandbox (OpenFn's "dumb" mode, with an exact global list instead of its
 * half-anchored regex). An empty `exports` list imports nothing from that adaptor.
 */
import vm from 'node:vm';
import { importDeclaration, literal } from './ast.mjs';
import { freeNames } from './scope.mjs';

/**
 * Names a job can use without an import: the ECMAScript built-ins of a fresh context, the
 * runtime's sandbox globals, and host globals that are absent from the sandbox but that an
 * author clearly does not mean as an adaptor function.
 */
const GLOBALS = new Set([
  ...Object.getOwnPropertyNames(vm.runInNewContext('globalThis')),
  'state', 'console', 'setTimeout', 'setInterval', 'clearTimeout', 'clearInterval', 'Buffer',
  'process', 'require', 'module', 'exports', '__dirname', '__filename', 'global',
  'URL', 'URLSearchParams', 'fetch', 'TextEncoder', 'TextDecoder', 'structuredClone',
  'setImmediate', 'clearImmediate', 'queueMicrotask', 'crypto', 'atob', 'btoa',
]);

/**
 * @param {object} program
 * @param {Array<{name: string, exports?: string[]}>} adaptors
 */
export function addAdaptorImports(program, adaptors) {
  const free = freeNames(program);
  const taken = new Set();
  const header = [];
  let reexport = null;
  for (const adaptor of adaptors) {
    const provided = Array.isArray(adaptor.exports) ? new Set(adaptor.exports) : null;
    const names = free.filter((name) => !taken.has(name) && (provided ? provided.has(name) : !GLOBALS.has(name)));
    if (names.length === 0) continue;
    for (const name of names) taken.add(name);
    header.push(importDeclaration(names.map((n) => [n, n]), adaptor.name));
    reexport ??= adaptor.name;
  }
  if (reexport) header.push({ type: 'ExportAllDeclaration', exported: null, source: literal(reexport), attributes: [] });
  program.body.unshift(...header);
}
