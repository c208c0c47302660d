/**
 * The job compiler against OpenFn's documented behaviour (openfn-engine.md §2).
 *
 * Golden tests compare normalised code (acorn parse + astring print of both sides), so they
 * check structure, not formatting. Every before/after example of §2.2, §2.3, §2.5 and the
 * §2.6 end-to-end example is here.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parse } from 'acorn';
import { generate } from 'astring';
import { compile, CompileError, COMPILER_VERSION } from '../compiler.mjs';

const normalise = (code) => generate(parse(code, { sourceType: 'module', ecmaVersion: 'latest' }));

/** Assert `source` compiles to the same program as `expected`. */
function assertCompiles(source, expected, options = {}) {
  const { code } = compile(source, options);
  assert.equal(normalise(code), normalise(expected), `compiling: ${source}`);
}

/** The error `fn` throws (node 20's assert.throws does not return it). */
function thrownBy(fn) {
  try {
    fn();
  } catch (error) {
    return error;
  }
  assert.fail('expected an error');
}

const DEFER_IMPORT = 'import { defer as _defer } from "@openfn/runtime";';
/** A subset of language-http's export names, in its namespace order. */
const HTTP = { name: '@openfn/language-http', exports: ['del', 'each', 'execute', 'fn', 'get', 'post', 'request'] };

describe('lazy state ($) — reference §2.2 examples', () => {
  const cases = [
    ['get($.data.endpoint)', 'get(state => state.data.endpoint)'],
    ['get(`hello ${$.first} ${$.last}`)', 'get(state => `hello ${state.first} ${state.last}`)'],
    ['get($.firstname + " " + $.lastname)', 'get(state => state.firstname + " " + state.lastname)'],
    ['get(city[$.location])', 'get(state => city[state.location])'],
    ['get(!$.data.x)', 'get(state => !state.data.x)'],
    ['fn($.callMeMaybe($.data.name))', 'fn(state => state.callMeMaybe(state.data.name))'],
    ['fn(() => { get($.data) })', 'fn(() => { get(state => state.data) })'],
    ['get(state => `hi ${$.data}`)', 'get(state => `hi ${state.data}`)'],
  ];
  for (const [before, after] of cases) {
    it(before, () => assertCompiles(before, `export default [${after}];`));
  }

  it('get((s) => $.data) is a compile error naming the parameter', () => {
    assert.throws(() => compile('get((s) => $.data)', { name: 'Extract' }), {
      name: 'CompileError',
      message: 'Extract: Lazy State Error: parameter "s" should be called "state" (1:4)',
    });
  });

  it('covers optional chains and computed keys', () => {
    assertCompiles('get($.a?.b); get($["x"])', 'export default [get(state => state.a?.b), get(state => state["x"])];');
  });

  it('wraps the whole method call when $ is its object', () => {
    assertCompiles('fn($.data.items.map(i => i.id))', 'export default [fn(state => state.data.items.map(i => i.id))];');
  });

  it('leaves a $ declared by an enclosing function alone', () => {
    assertCompiles('fn(($) => $.data)', 'export default [fn($ => $.data)];');
    assertCompiles('fn(s => { const $ = s; return $.data })', 'export default [fn(s => { const $ = s; return $.data; })];');
  });

  it('leaves $ in a top-level object literal alone, as OpenFn does', () => {
    assertCompiles('const m = { a: $.x }; fn(s => s)', 'const m = { a: $.x }; export default [fn(s => s)];');
  });

  it('still rewrites $ in an object literal passed to an operation', () => {
    assertCompiles('post("/x", { body: $.data })', 'export default [post("/x", state => ({ body: state.data }))];');
  });
});

describe('promises -> defer — reference §2.3 examples', () => {
  const cases = [
    ['fn(x).then(() => {})', '_defer(fn(x), p => p.then(() => {}))'],
    ['fn(x).catch((e) => e)', '_defer(fn(x), undefined, (e) => e)'],
    ['fn(x).then(a).then(b)', '_defer(fn(x), p => p.then(a).then(b))'],
    ['fn(x).catch(e1).then(s1).then(s2)', '_defer(fn(x), p => p.then(s1).then(s2), e1)'],
    ['fn(x).catch(e1).then(s1).catch(e2)', '_defer(fn(x), p => p.then(s1).catch(e2), e1)'],
    ['fn(get(x).then(s => s))', 'fn(_defer(get(x), p => p.then(s => s)))'],
  ];
  for (const [before, after] of cases) {
    it(before, () => assertCompiles(before, `${DEFER_IMPORT}\nexport default [${after}];`));
  }

  it('fn((state) => { return get().then(s => s) }) is unchanged', () => {
    assertCompiles('fn((state) => { return get().then(s => s) })', 'export default [fn((state) => { return get().then(s => s) })];');
  });

  it('rewrites chains in arguments of other calls: each(..., post().then())', () => {
    assertCompiles(
      'each("$.items[*]", post("/x").then(s => s))',
      `${DEFER_IMPORT}\nexport default [each("$.items[*]", _defer(post("/x"), p => p.then(s => s)))];`,
    );
  });

  it('puts the defer import after existing imports and not twice', () => {
    assertCompiles(
      'import x from "@openfn/language-common";\nfn(a).then(b); fn(c).then(d);',
      `import x from "@openfn/language-common";\n${DEFER_IMPORT}\nexport default [_defer(fn(a), p => p.then(b)), _defer(fn(c), p => p.then(d))];`,
    );
  });

  it('leaves a chain that does not start with a call alone', () => {
    assertCompiles('promise.then(f)', 'export default [promise.then(f)];');
  });
});

describe('ensure exports and top-level operations — reference §2.4, §2.5 examples', () => {
  it('fn();fn();fn(); -> export default [fn(), fn(), fn()];', () => {
    assertCompiles('fn();fn();fn();', 'export default [fn(), fn(), fn()];');
  });
  it('const x = dateFns.parse() -> unchanged, plus export default [];', () => {
    assertCompiles('const x = dateFns.parse()', 'const x = dateFns.parse();\nexport default [];');
  });
  it('combine(fn()) -> only the outer call is moved', () => {
    assertCompiles('combine(fn())', 'export default [combine(fn())];');
  });
  it('keeps declarations, assignments, await and if where they are', () => {
    assertCompiles(
      'let a = 1; a = 2; fn(a); await x; if (a) fn(b); http.get("/");',
      'let a = 1; a = 2; await x; if (a) fn(b); export default [fn(a), http.get("/")];',
    );
  });
  it('appends to an existing default array, existing elements first', () => {
    assertCompiles('fn(a);\nexport default [fn(b)];', 'export default [fn(b), fn(a)];');
  });
  it('moves console.log into the array, as OpenFn does', () => {
    assertCompiles('console.log("x"); fn(a)', 'export default [console.log("x"), fn(a)];');
  });
  it('leaves the module alone when the last statement is not export default [...]', () => {
    assertCompiles('export default fn; fn(a);', 'export default fn; fn(a);');
  });
  it('keeps named exports', () => {
    assertCompiles('export const x = () => 1; fn(() => x())', 'export const x = () => 1; export default [fn(() => x())];');
  });
  it('reports operations with callee name, line and 1-based order', () => {
    const { operations, map } = compile('fn(a);\n\nhttp.get("/");\nget($.x).then(f);');
    assert.deepEqual(operations, [
      { name: 'fn', line: 1, order: 1 },
      { name: undefined, line: 3, order: 2 },
      { name: 'get', line: 4, order: 3 },
    ]);
    assert.deepEqual(map.operations, operations);
  });
});

describe('adaptor imports — reference §2.6', () => {
  it('end-to-end example with the language-http exports', () => {
    assertCompiles(
      'get($.data.url).then(s => { s.data.n = 1; return s; });\nfn(state => state);',
      `import { get, fn } from "@openfn/language-http";
export * from "@openfn/language-http";
import { defer as _defer } from "@openfn/runtime";
export default [_defer(get(state => state.data.url), p => p.then(s => { s.data.n = 1; return s; })), fn(state => state)];`,
      { adaptors: [HTTP] },
    );
  });

  it('imports only free names, not declared ones', () => {
    const source = `
      import { del } from "elsewhere";
      const fn = 1;
      function each() {}
      class request {}
      try {} catch (execute) { execute; }
      post(x => get, function (get) { return get; });`;
    const { code } = compile(source, { adaptors: [HTTP] });
    assert.match(code, /import \{post, get\} from "@openfn\/language-http";/);
    assert.doesNotMatch(code, /import \{[^}]*\b(fn|each|request|execute|del)\b[^}]*\} from "@openfn\/language-http"/);
  });

  it('does not count property names, keys or labels, but counts computed members and shorthands', () => {
    const adaptor = { name: 'a', exports: ['get', 'fn', 'each', 'post', 'del', 'request'] };
    const { code } = compile('x.get; ({ fn: 1 }); each: for(;;) break each; y[post]; ({ del }); class C { request() {} }', { adaptors: [adaptor] });
    assert.match(code, /^import \{post, del\} from "a";$/m);
  });

  it('honours block scoping and hoisting', () => {
    const adaptor = { name: 'a', exports: ['fn', 'get', 'post'] };
    const { code } = compile('{ let fn = 1; } fn(s => s); g(); function g() { var post; get(post) }', { adaptors: [adaptor] });
    assert.match(code, /^import \{fn, get\} from "a";$/m);
  });

  it('without an exports list imports every free name except sandbox globals', () => {
    const { code } = compile(
      'fn(s => ({ ...s, n: parseInt(JSON.stringify(Math.max(1, 2))), d: new Date(), u: undefined, p: Promise, b: Buffer, m: new Map(), st: state, stateful: stateful }))',
      { adaptors: [{ name: 'a' }] },
    );
    assert.match(code, /^import \{fn, stateful\} from "a";$/m);
  });

  it('imports nothing from an adaptor whose exports list is empty', () => {
    const { code } = compile('fn(s => s)', { adaptors: [{ name: 'a', exports: [] }] });
    assert.doesNotMatch(code, /import|export \*/);
  });

  it('with several adaptors imports each name once, from the first, and re-exports only one adaptor', () => {
    assertCompiles(
      'fn(s => s); get("/"); sql("x")',
      `import { fn, get } from "@openfn/language-http";
import { sql } from "@openfn/language-postgresql";
export * from "@openfn/language-http";
export default [fn(s => s), get("/"), sql("x")];`,
      {
        adaptors: [
          { name: '@openfn/language-http@7.2.10', exports: ['fn', 'get', 'execute'] },
          { name: '@openfn/language-postgresql', exports: ['fn', 'sql', 'execute'] },
        ],
      },
    );
  });

  it('re-exports the first adaptor anything is imported from', () => {
    const { code } = compile('sql("x")', {
      adaptors: [HTTP, { name: '@openfn/language-postgresql', exports: ['sql', 'execute'] }],
    });
    assert.match(code, /export \* from "@openfn\/language-postgresql";/);
    assert.doesNotMatch(code, /language-http/);
  });

  it('does not import names used only inside a top-level object literal, as OpenFn does', () => {
    const { code } = compile('const m = { id: get() }; fn(s => s)', { adaptors: [HTTP] });
    assert.match(code, /^import \{fn\} from "@openfn\/language-http";$/m);
  });
});

describe('compile errors', () => {
  it('a syntax error carries the step name, line and column', () => {
    const error = thrownBy(() => compile('fn(s => s);\nfn(s => s.data.);', { name: 'Extract' }));
    assert.ok(error instanceof CompileError);
    assert.equal(error.name, 'CompileError');
    assert.equal(error.type, 'CompileError');
    assert.equal(error.severity, 'crash');
    assert.equal(error.message, 'Extract: Unexpected token (2:15)');
    assert.equal(error.line, 2);
    assert.equal(error.column, 15);
  });

  it('drops one trailing space before parsing, as OpenFn does: the column matches ws-worker', () => {
    // ws-worker 1.25 reports `job-x: Unexpected token (1:19)` for this job (transcript
    // compile-crash); acorn on the unstripped code says (1:20)
    assert.throws(() => compile('fn(s => { return s; ', { name: 'job-x' }), {
      message: 'job-x: Unexpected token (1:19)',
    });
  });

  it('counts a leading tab as OpenFn does (recast expands it to the next 4-column stop)', () => {
    const syntax = thrownBy(() => compile('fn(s => {\n\treturn s +;\n});', { name: 'x' }));
    assert.equal(syntax.message, 'x: Unexpected token (2:14)');
    assert.deepEqual([syntax.line, syntax.column], [2, 14]);
    assert.throws(() => compile('fn(s => {\n  \t return s +;\n});', { name: 'x' }), {
      message: 'x: Unexpected token (2:15)',
    });
    assert.throws(() => compile('\tconst x = $.data;', { name: 'x' }), {
      message: 'x: Lazy State Error: Must be inside an operation (1:14)',
    });
    // a tab that is not leading whitespace is one column, as in OpenFn
    assert.throws(() => compile('fn(s =>\ts +)', { name: 'x' }), { message: 'x: Unexpected token (1:11)' });
  });

  it('uses "src" when no step name is given', () => {
    assert.throws(() => compile('fn(('), { message: /^src: Unexpected token \(1:4\)$/ });
  });

  const misuse = [
    // OpenFn's wording and positions: the `$` for a misplaced one, the arrow for a bad arrow
    ['const x = $.data', 'Extract: Lazy State Error: Must be inside an operation (1:10)', 1, 10],
    ['fn(s => s);\n$.data = 20', 'Extract: Lazy State Error: Must be inside an operation (2:0)', 2, 0],
    ['fn(s => { return $.data })', 'Extract: Lazy State Error: Must be inside an operation (1:17)', 1, 17],
    ['$.fn()', 'Extract: Lazy State Error: Must be inside an operation (1:0)', 1, 0],
    ['get((s) => $.data)', 'Extract: Lazy State Error: parameter "s" should be called "state" (1:4)', 1, 4],
    ['get(({ data }) => $.data)', 'Extract: Lazy State Error: parameter "the parameter" should be called "state" (1:4)', 1, 4],
    ['get(() => $.data)', 'Extract: Lazy State Error: parent has wrong arity (1:4)', 1, 4],
    ['get((state, x) => $.data)', 'Extract: Lazy State Error: parent has wrong arity (1:4)', 1, 4],
  ];
  for (const [source, message, line, column] of misuse) {
    it(`lazy state misuse: ${source.replace('\n', ' ')}`, () => {
      const error = thrownBy(() => compile(source, { name: 'Extract' }));
      assert.ok(error instanceof CompileError);
      assert.equal(error.message, message);
      assert.equal(error.subtype, 'LazyStateError');
      assert.equal(error.severity, 'crash');
      assert.deepEqual([error.line, error.column], [line, column]);
    });
  }

  it('a non-string job is a CompileError, not a TypeError', () => {
    assert.throws(() => compile(undefined, { name: 'Extract' }), {
      name: 'CompileError',
      message: 'Extract: job code must be a string, got undefined',
    });
  });
});

describe('output', () => {
  it('is an ES module with a source map the runtime can read', () => {
    const source = 'fn(s => s);\nget($.data.url);\n';
    const { code, map } = compile(source, { name: 'Extract', adaptors: [HTTP] });
    parse(code, { sourceType: 'module', ecmaVersion: 'latest' });
    assert.equal(map.version, 3);
    assert.deepEqual(map.sources, ['Extract.js']);
    assert.deepEqual(map.sourcesContent, [source]);
    assert.ok(map.mappings.length > 0);
  });

  it('has a version string', () => {
    assert.match(COMPILER_VERSION, /^\d+\.\d+\.\d+$/);
  });
});
