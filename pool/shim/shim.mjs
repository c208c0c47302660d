// poolctl's Node shim: a long-lived process that compiles OpenFn jobs and runs them with the
// published @openfn/runtime, one run at a time, driven over fd 3 (see PROTOCOL.md).
//
// Boot order matters: check vm.SourceTextModule (the runtime silently fails every step
// without --experimental-vm-modules), import the runtime and the compiler, register the ESM
// hook once (registering it per run slows every later run), then say `ready`. Any boot failure
// is one line on stderr and exit code 3, which the executor reports as a boot failure.
import fs from 'node:fs';
import path from 'node:path';
import { register } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';
import vm from 'node:vm';

// CPU spent so far (Node's bootstrap and loading this file), then per boot step: the `ready`
// message reports it, so a profile of a shim's start-up needs no profiler
const bootCpu = { node: cpuMs() };
function cpuMs(since = 0) {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000 - since;
}

const BOOT_FAILURE = 3;
const PROTOCOL_FD = 3;

function bootFail(reason) {
  process.stderr.write(`shim: ${reason}\n`);
  process.exit(BOOT_FAILURE);
}

// the executor passes the adaptor repo as our one argument: it becomes the working directory
const repoDir = process.argv[2];
if (repoDir) {
  try {
    process.chdir(repoDir);
  } catch (e) {
    bootFail(`cannot use the adaptor repo ${repoDir}: ${e.message}`);
  }
}
if (typeof vm.SourceTextModule !== 'function') {
  bootFail('vm.SourceTextModule is missing: node must run with --experimental-vm-modules');
}
try {
  fs.fstatSync(PROTOCOL_FD);
} catch {
  bootFail(`fd ${PROTOCOL_FD} is not open: the shim is started by its executor (PROTOCOL.md)`);
}

let runtime;
let loggerModule;
let compiler;
let mark = cpuMs();
try {
  runtime = await import('@openfn/runtime');
  loggerModule = await import('@openfn/logger');
} catch (e) {
  bootFail(`cannot import @openfn/runtime: ${e.message} (run npm ci in pool/shim)`);
}
bootCpu.runtime = cpuMs(mark);
mark = cpuMs();
try {
  compiler = await import('./compiler.mjs');
} catch (e) {
  bootFail(`cannot load the job compiler (compiler.mjs): ${e.message}`);
}
bootCpu.compiler = cpuMs(mark);
mark = cpuMs();

const { openChannel } = await import('./channel.mjs');
const { createRunner } = await import('./run.mjs');
const { messageOf } = await import('./outcome.mjs');
bootCpu.shim = cpuMs(mark);

// Where @openfn/runtime's files are. In the pool's one-file bundle of this shim (prepare.mjs)
// `import.meta` is the bundle's, so the bundle says where pool/shim is.
/* global __poolctlShimDir */
const runtimeEntry = typeof __poolctlShimDir === 'string'
  ? path.join(__poolctlShimDir, 'node_modules', '@openfn', 'runtime', 'dist', 'index.js')
  : fileURLToPath(import.meta.resolve('@openfn/runtime'));

function runtimeVersion() {
  const pkg = JSON.parse(fs.readFileSync(path.join(path.dirname(runtimeEntry), '..', 'package.json'), 'utf8'));
  return pkg.version;
}

// The runtime's ESM hook (retry an extensionless import with `.js`, for adaptors importing
// `lodash/set`) runs module.register's loader thread: ~50-80 ms CPU. A prepared adaptor is one
// file with nothing left to resolve, so the hook is registered (once) only before the first
// import of a plain adaptor; a shim that loads only prepared ones never pays for it.
// (The hook file is the one runtime.registerEsmHook() registers, found from runtimeEntry so
// that the bundled shim finds it too.)
let hookRegistered = false;
function needEsmHook() {
  if (hookRegistered) return;
  hookRegistered = true;
  const hook = path.join(path.dirname(runtimeEntry), 'modules', 'esm-resolve-hook.js');
  register(pathToFileURL(hook).href);
}

const versions = {
  node: process.versions.node,
  runtime: runtimeVersion(),
  compiler: String(compiler.COMPILER_VERSION ?? 'unknown'),
};

let exiting = false;
const channel = openChannel(PROTOCOL_FD, onMessage, () => shutdown(0));

const runner = createRunner({
  run: runtime.default,
  getModuleEntryPoint: runtime.getModuleEntryPoint,
  createLogger: loggerModule.default,
  needEsmHook,
  compile: compiler.compile,
  send: (message) => channel.send(message),
  versions,
});

// A job's stray async throw must not kill the process silently: it ends the run as a crash.
// With no run active it is only reported on stderr (which the executor logs).
function onUncaught(error) {
  if (!runner.crash(error)) {
    process.stderr.write(`shim: uncaught error while idle: ${messageOf(error)}\n`);
  }
}
process.on('uncaughtException', onUncaught);
process.on('unhandledRejection', onUncaught);

function onMessage(message) {
  switch (message?.type) {
    case 'run':
      runner.execute(message).catch((e) => onUncaught(e));
      break;
    case 'warm':
      runner.warm(message.adaptors).then((result) => channel.send({ type: 'warmed', ...result }));
      break;
    case 'exit':
      shutdown(0);
      break;
    default:
      process.stderr.write(`shim: unknown message type ${JSON.stringify(message?.type)}\n`);
  }
}

async function shutdown(code) {
  if (exiting) return;
  exiting = true;
  await Promise.race([channel.flush(), new Promise((r) => setTimeout(r, 1000))]);
  process.exit(code);
}

channel.send({
  type: 'ready',
  pid: process.pid,
  node: versions.node,
  runtime: versions.runtime,
  compiler: versions.compiler,
  boot_cpu_ms: Object.fromEntries(Object.entries({ ...bootCpu, total: cpuMs() })
    .map(([k, v]) => [k, Math.round(v)])),
});
