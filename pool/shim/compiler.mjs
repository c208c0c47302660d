/**
 * The OpenFn job compiler: turns job DSL into the ESM module @openfn/runtime executes.
 *
 * The published @openfn/compiler is not on the registry, so this is our own, on acorn
 * (parse), plain tree surgery and astring (print, with a source map). It applies OpenFn's
 * five transforms in OpenFn's order (reference openfn-engine.md §2):
 *   1. lazy state          `get($.x)`            -> `get(state => state.x)`   compiler/lazy-state.mjs
 *   2. promise chains      `fn(x).then(f)`       -> `_defer(fn(x), p => p.then(f))`  compiler/promises.mjs
 *   3. ensure exports      no default export     -> `export default [];`      compiler/operations.mjs
 *   4. top-level operations `fn(); get();`        -> `export default [fn(), get()];`
 *   5. adaptor imports     free names the adaptor exports are imported, then
 *                          `export * from "<adaptor>"` so its `execute` is the reducer.  compiler/imports.mjs
 *
 * Decisions where we knowingly match or differ from OpenFn (reference §2.6/§2.7):
 * - KEPT: object literals initialising top-level `const|let|var x = {...}` are skipped by
 *   every pass (OpenFn kit#1029). A `$` there stays `$` (ReferenceError at run time), and an
 *   adaptor function used only there is not imported, exactly as on OpenFn, so a job that
 *   works here works there.
 * - KEPT: every top-level call statement becomes an operation, `console.log(...)` included;
 *   its `undefined` result then fails validation ("Invalid operation at statement N", crash)
 *   as on OpenFn, rather than silently working here and failing there.
 * - CHANGED: free identifiers come from real scope analysis (scope.mjs), not OpenFn's syntactic
 *   shortcuts: `b` in `a[b]` counts as used, block scoping is honoured, and with no `exports`
 *   list the sandbox globals are excluded by exact name (OpenFn's regex also excludes any name
 *   merely containing e.g. `Set` or `state`).
 * - CHANGED: several adaptors: each name is imported once (from the first adaptor exporting
 *   it) and only the first adaptor anything is imported from gets `export *`, so `execute` is
 *   unambiguous (OpenFn produces duplicate imports and two `export *`).
 * - CHANGED: `$` as the object of a method call (`$.items.map(f)`) wraps the whole call
 *   (OpenFn wraps only the callee when the chain is longer than `$.fn`), and a top-level
 *   `$.fn()` statement is a compile error rather than a silent no-op arrow.
 * - CHANGED: a destructured arrow parameter is called "the parameter" in the lazy-state error
 *   (OpenFn prints `parameter "undefined"`); the message is otherwise OpenFn's.
 * - CHANGED: `_defer` is imported unless `_defer` is already bound by an import (OpenFn skips it
 *   whenever any `@openfn/runtime` import exists, leaving `_defer` undefined).
 * - NOT DONE: a one-line source ending in `.js` is not read as a file path; comments are not
 *   printed (OpenFn keeps comments on untouched code only); untouched code is reformatted by
 *   astring, positions in errors go through the source map.
 */
import { parse } from 'acorn';
import { generate } from 'astring';
import sourceMap from 'source-map';
import { CompileError, LazyStateError } from './compiler/errors.mjs';
import { addAdaptorImports } from './compiler/imports.mjs';
import { transformLazyState } from './compiler/lazy-state.mjs';
import { collectOperations, ensureDefaultExport } from './compiler/operations.mjs';
import { transformPromises } from './compiler/promises.mjs';

export { CompileError };

/** Reported to Lightning as the compiler version (run-start `versions.compiler`). */
export const COMPILER_VERSION = '1.0.0';

/**
 * Compile one step's job code.
 *
 * @param {string} source job DSL
 * @param {{name?: string, adaptors?: Array<{name: string, exports?: string[]}>}} [options]
 *   `name`: step name or id, used in error messages and as the source map's file (`<name>.js`,
 *   which is what the runtime looks up); `adaptors`: names without or with `@version`, and the
 *   adaptor's export names (omit for "import every free non-global name").
 * @returns {{code: string, map: object, operations: Array<{name: string|undefined, line: number, order: number}>}}
 *   `map` is a v3 source map object that also carries `operations`, so it can be passed to the
 *   runtime as `step.sourceMap` unchanged.
 * @throws {CompileError} syntax errors and lazy-state misuse, with the step name and position
 */
export function compile(source, options = {}) {
  const name = options.name ? String(options.name) : 'src';
  if (typeof source !== 'string') {
    throw new CompileError(name, `job code must be a string, got ${source === null ? 'null' : typeof source}`, null, 'InputError');
  }
  const program = parseJob(source, name);
  try {
    transformLazyState(program);
  } catch (e) {
    if (e instanceof LazyStateError) {
      throw new CompileError(name, e.message, reportedPosition(source, e.pos), 'LazyStateError');
    }
    throw e;
  }
  transformPromises(program);
  ensureDefaultExport(program);
  const operations = collectOperations(program);
  const adaptors = (options.adaptors ?? []).map((a) => ({ ...a, name: stripVersion(a.name) }));
  addAdaptorImports(program, adaptors);
  const { code, map } = print(program, source, name);
  map.operations = operations;
  return { code, map, operations };
}

function parseJob(source, name) {
  try {
    // OpenFn's compiler drops one trailing space before parsing; a syntax error at the end of
    // the code then has the same column on both workers
    return parse(source.replace(/ $/, ''), { sourceType: 'module', ecmaVersion: 'latest', allowHashBang: true, locations: true });
  } catch (e) {
    if (e instanceof SyntaxError && e.loc) {
      const reason = e.message.replace(/ \(\d+:\d+\)$/, ''); // acorn's own position, replaced
      throw new CompileError(name, reason, reportedPosition(source, e.loc), 'SyntaxError');
    }
    throw e;
  }
}

const TAB_WIDTH = 4; // recast's default

/**
 * A position in `source` as OpenFn reports it. OpenFn's parser (recast) rewrites each line's
 * leading whitespace as spaces before acorn sees it: a tab advances to the next multiple of 4,
 * `\v`, `\f`, `\r` and U+FEFF count nothing, any other whitespace one. So on a line indented
 * with tabs ws-worker's columns are further right than acorn's on the raw code; the same shift
 * here keeps the messages equal. Only the reported position changes, never the code.
 */
function reportedPosition(source, pos) {
  const line = source.split(/\r\n?|\n|\u2028|\u2029/)[pos.line - 1] ?? '';
  const lead = /^\s*/.exec(line)[0];
  const within = Math.min(pos.column, lead.length);
  return { line: pos.line, column: indentWidth(lead.slice(0, within)) + pos.column - within };
}

function indentWidth(spaces) {
  let width = 0;
  for (const ch of spaces) {
    if (ch === '\t') width = (Math.floor(width / TAB_WIDTH) + 1) * TAB_WIDTH;
    else if (!'\v\f\r\ufeff'.includes(ch)) width += 1;
  }
  return width;
}

function print(program, source, name) {
  const file = `${name}.js`;
  const generator = new sourceMap.SourceMapGenerator({ file });
  generator.setSourceContent(file, source);
  const code = generate(program, { sourceMap: generator });
  return { code, map: generator.toJSON() };
}

/** `@openfn/language-http@7.2.10` -> `@openfn/language-http` (the import specifier). */
function stripVersion(specifier) {
  const at = specifier.lastIndexOf('@');
  return at > 0 ? specifier.slice(0, at) : specifier;
}
