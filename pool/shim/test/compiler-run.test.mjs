/**
 * Compiled jobs run in the real @openfn/runtime and produce the state a user expects.
 *
 * The runtime needs `node --experimental-vm-modules`, which `node --test` does not pass to
 * test files, so one child node runs every case. The adaptor is a tiny local ESM package
 * posing as @openfn/language-common (no adaptor is installed for this test); it lives under
 * a `node_modules` folder so the runtime recognises its stack frames as adaptor code.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { compile } from '../compiler.mjs';

const SHIM_DIR = dirname(dirname(fileURLToPath(import.meta.url)));

const FAKE_ADAPTOR = `
export const fn = (f) => (state) => f(state);
export const get = (url) => async (state) => {
  const resolved = typeof url === 'function' ? url(state) : url;
  return { ...state, data: { ...state.data, fetched: resolved } };
};
export const fail = (message) => () => { throw new Error(message); };
export const failLater = (message) => async () => { throw new Error(message); };
export const execute = (...operations) => (state) =>
  operations.reduce((promise, op) => promise.then(op), Promise.resolve({ ...state, executedBy: 'fake-adaptor' }));
`;

/** Runs in the child: each case is a one-step plan; prints {id: {state} | {error}} as JSON. */
const RUNNER = `
import run from '@openfn/runtime';
import { createMockLogger } from '@openfn/logger';
let input = '';
for await (const chunk of process.stdin) input += chunk;
const { adaptorDir, cases } = JSON.parse(input);
const results = {};
for (const c of cases) {
  const plan = { id: c.id, workflow: { steps: [{ id: 'job', name: 'job', expression: c.code, sourceMap: c.map }] } };
  const options = {
    logger: createMockLogger(),
    jobLogger: createMockLogger(),
    linker: { modules: { '@openfn/language-common': { path: adaptorDir } }, whitelist: [/^@openfn/] },
  };
  try {
    results[c.id] = { state: await run(plan, c.input ?? {}, options) };
  } catch (e) {
    results[c.id] = { error: { name: e.name, message: e.message, severity: e.severity } };
  }
}
process.stdout.write('\\n@@RESULTS@@' + JSON.stringify(results));
`;

const CASES = {
  thenChain: {
    source: 'fn(s => ({ ...s, data: { n: 1 } })).then(s => { s.data.n += 1; return s; });',
  },
  lazyState: {
    source: 'fn(s => { s.data.url = "b"; return s; });\nget($.data.url);',
    input: { data: { url: 'a' } },
  },
  lazyStateInThenChain: {
    source: 'get(`${$.data.base}/items`).then(s => ({ ...s, data: { ...s.data, seen: s.data.fetched } }));',
    input: { data: { base: 'http://x' } },
  },
  catchOnOperation: {
    source: 'fail("boom").catch((e, state) => ({ ...state, data: { caught: e.message } }));',
  },
  catchThenChain: {
    // an async failure: defer() skips the chain when the operation throws synchronously
    source: 'failLater("boom").catch((e, s) => ({ ...s, data: { n: 1 } })).then(s => ({ ...s, data: { n: s.data.n + 1 } }));',
  },
  consoleLogMoved: {
    source: 'console.log("hello");\nfn(s => s);',
  },
  typeErrorMappedToSource: {
    source: 'fn(s => s);\n\nfn(s => s.data.x.y);',
    input: { data: {} },
  },
  adaptorErrorNamesOperation: {
    source: 'fn(s => s);\nfail("boom");',
  },
};

describe('compiled jobs in @openfn/runtime', () => {
  let workDir;
  let results;

  before(async () => {
    workDir = mkdtempSync(join(tmpdir(), 'compiler-run-'));
    const adaptorDir = join(workDir, 'node_modules', '@openfn', 'language-common');
    mkdirSync(adaptorDir, { recursive: true });
    writeFileSync(join(adaptorDir, 'package.json'), JSON.stringify({ name: '@openfn/language-common', version: '0.0.0', type: 'module', main: 'index.js' }));
    writeFileSync(join(adaptorDir, 'index.js'), FAKE_ADAPTOR);
    // the export names, computed as the shim does
    const namespace = await import(pathToFileURL(join(adaptorDir, 'index.js')).href);
    const adaptors = [{ name: '@openfn/language-common', exports: Object.keys(namespace).filter((k) => k !== 'default') }];

    const cases = Object.entries(CASES).map(([id, c]) => ({ id, input: c.input, ...compile(c.source, { name: 'job', adaptors }) }));
    const child = spawnSync(process.execPath, ['--experimental-vm-modules', '--no-warnings', '--input-type=module', '-e', RUNNER], {
      cwd: SHIM_DIR,
      input: JSON.stringify({ adaptorDir, cases }),
      encoding: 'utf8',
      timeout: 60_000,
    });
    assert.equal(child.status, 0, `runner failed: ${child.stderr}`);
    results = JSON.parse(child.stdout.slice(child.stdout.lastIndexOf('@@RESULTS@@') + '@@RESULTS@@'.length));
  });

  after(() => rmSync(workDir, { recursive: true, force: true }));

  it('runs a .then chain on an operation', () => {
    assert.deepEqual(results.thenChain.state.data, { n: 2 });
  });

  it("uses the adaptor's execute (export * reaches the runtime)", () => {
    assert.equal(results.thenChain.state.executedBy, 'fake-adaptor');
  });

  it('reads $ when the operation runs, not when the job loads', () => {
    assert.equal(results.lazyState.state.data.fetched, 'b');
  });

  it('combines $ and a .then chain', () => {
    assert.deepEqual(results.lazyStateInThenChain.state.data, { base: 'http://x', fetched: 'http://x/items', seen: 'http://x/items' });
  });

  it('passes a .catch on the operation the error and the input state', () => {
    assert.deepEqual(results.catchOnOperation.state.data, { caught: 'boom' });
    assert.equal(results.catchOnOperation.state.errors, undefined);
  });

  it('continues a chain after a recovering .catch', () => {
    assert.deepEqual(results.catchThenChain.state.data, { n: 2 });
  });

  it('crashes on a top-level console.log, as OpenFn does', () => {
    assert.equal(results.consoleLogMoved.error?.severity, 'crash');
    assert.match(results.consoleLogMoved.error.message, /Invalid operation at statement 0/);
  });

  it('maps a runtime error position back to the job source through the source map', () => {
    const error = results.typeErrorMappedToSource.state.errors.job;
    assert.equal(error.name, 'RuntimeError');
    assert.equal(error.pos.line, 3);
    assert.equal(error.pos.src, 'fn(s => s.data.x.y);');
  });

  it('names the failing operation and its line for an adaptor error', () => {
    const error = results.adaptorErrorNamesOperation.state.errors.job;
    assert.equal(error.name, 'AdaptorError');
    assert.equal(error.operationName, 'fail');
    assert.equal(error.line, 2);
  });
});
