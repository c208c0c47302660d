// Prepare one installed adaptor: bundle it into one ESM file with esbuild, then check that the
// bundle exports the same names, each with the same `typeof`, as the plain package.
//
// Run by the pool (pool/prepare.py), never by a shim: `node prepare.mjs <request JSON>` with
// {package: <the adaptor's package folder>, out: <an empty folder to write into>}. It writes
// `<out>/adaptor.mjs` and prints one JSON line: {ok: true, exports: {name: typeof}} or
// {ok: false, reason}. Exit code 0 either way; anything else is a crash of this script.
// With {shim: <pool/shim/shim.mjs>, out} it bundles the shim itself into `<out>/shim.mjs`.
//
// Why ESM and not CommonJS: the runtime's linker imports `<entry>?cache=<key>` to give each
// `context` run a fresh adaptor module, and Node caches CommonJS by file name whatever the query
// says, so a CommonJS bundle would hand every run the same instance. A `createRequire` banner
// gives the bundle a `require` (CommonJS dependencies that esbuild leaves as dynamic requires,
// Node built-ins mostly), resolved from the plain package's folder; `__filename` / `__dirname`
// are the plain entry's.
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const BUNDLE = 'adaptor.mjs';

function reply(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

/** The linker's CommonJS interop (runtime's linker.ts): which object's keys become exports. */
function exportTarget(ns) {
  if (ns.__esModule && ns.default?.default) return ns.default.default;
  if (Object.keys(ns).length === 1 && ns.default && Object.keys(ns.default).length > 0) {
    return ns.default;
  }
  return ns;
}

function shape(ns) {
  const target = exportTarget(ns);
  const out = {};
  for (const name of Object.keys(target).sort()) out[name] = typeof target[name];
  return out;
}

function differences(plain, bundled) {
  const out = [];
  for (const name of Object.keys(plain)) {
    if (!(name in bundled)) out.push(`${name} missing`);
    else if (plain[name] !== bundled[name]) out.push(`${name} is ${bundled[name]}, not ${plain[name]}`);
  }
  for (const name of Object.keys(bundled)) {
    if (!(name in plain)) out.push(`${name} extra`);
  }
  return out;
}

/**
 * The shim itself as one file: shim.mjs with the runtime, the logger and the compiler inlined
 * (their hundreds of files are most of a shim's boot). `require` and `__poolctlShimDir` point
 * back at pool/shim, where the runtime's ESM hook file and package.json stay.
 */
async function bundleShim(request) {
  const esbuild = await import('esbuild');
  const outfile = path.join(request.out, 'shim.mjs');
  const banner = [
    "import { createRequire as __poolctlCreateRequire } from 'node:module';",
    `const require = __poolctlCreateRequire(${JSON.stringify(request.shim)});`,
    `const __poolctlShimDir = ${JSON.stringify(path.dirname(request.shim))};`,
  ].join('\n');
  try {
    await esbuild.build({
      entryPoints: [request.shim],
      outfile,
      ...esmOptions(banner),
      logLevel: 'silent',
      legalComments: 'none',
    });
  } catch (e) {
    return reply({ ok: false, reason: `esbuild failed: ${e.errors?.[0]?.text ?? e.message}` });
  }
  return reply({ ok: true, esbuild: esbuild.version, bytes: fs.statSync(outfile).size });
}

// what every bundle of ours is: one ESM file for this Node, with ``banner`` on top
function esmOptions(banner) {
  return {
    bundle: true,
    format: 'esm',
    platform: 'node',
    target: `node${process.versions.node.split('.')[0]}`,
    banner: { js: banner },
  };
}

async function main() {
  const request = JSON.parse(process.argv[2] || '{}');
  if (request.shim) return bundleShim(request);
  const { getModuleEntryPoint } = await import('@openfn/runtime');
  const esbuild = await import('esbuild');
  const entry = await getModuleEntryPoint('adaptor', request.package);
  if (!entry) return reply({ ok: false, reason: `no package.json in ${request.package}` });
  const outfile = path.join(request.out, BUNDLE);
  const anchor = JSON.stringify(entry.path);
  // `require` must be a top-level binding of the file, for esbuild's own `__require` helper:
  // a banner. `__filename`/`__dirname` are injected instead, so esbuild renames around an
  // adaptor's own top-level `const __filename` (a common ESM idiom) rather than colliding.
  const banner = [
    "import { createRequire as __poolctlCreateRequire } from 'node:module';",
    `const require = __poolctlCreateRequire(${anchor});`,
  ].join('\n');
  const inject = path.join(request.out, '.globals.mjs');
  fs.writeFileSync(inject, [
    `const __filename = ${anchor};`,
    `const __dirname = ${JSON.stringify(path.dirname(entry.path))};`,
    'export { __filename, __dirname };',
  ].join('\n'));
  try {
    await esbuild.build({
      entryPoints: [entry.path],
      outfile,
      ...esmOptions(banner),
      inject: [inject],
      logLevel: 'silent',
      legalComments: 'none',
    });
  } catch (e) {
    const first = e.errors?.[0];
    const where = first?.location ? ` (${first.location.file}:${first.location.line})` : '';
    return reply({ ok: false, reason: `esbuild failed: ${first?.text ?? e.message}${where}` });
  } finally {
    fs.rmSync(inject, { force: true });
  }
  let plain;
  let bundled;
  try {
    plain = shape(await import(pathToFileURL(entry.path).href));
  } catch (e) {
    return reply({ ok: false, reason: `the plain package does not load: ${e.message}` });
  }
  try {
    bundled = shape(await import(pathToFileURL(outfile).href));
  } catch (e) {
    return reply({ ok: false, reason: `the bundle does not load: ${e.message}` });
  }
  const diff = differences(plain, bundled);
  if (diff.length) {
    return reply({ ok: false, reason: `the bundle's exports differ: ${diff.slice(0, 5).join('; ')}` });
  }
  return reply({
    ok: true,
    exports: bundled,
    esbuild: esbuild.version,
    bytes: fs.statSync(outfile).size,
  });
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`prepare: ${e?.stack ?? e}\n`);
    process.exit(1);
  },
);
