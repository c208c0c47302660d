// One run: compile every step, execute the plan with @openfn/runtime, stream protocol events.
//
// The events and their order are PROTOCOL.md's; reasons follow openfn-engine.md §4. This module
// owns everything a run touches in the process (the global console, timers, the uncaught-error
// hook's target) and puts it back when the run ends, so the next run starts clean.
import { randomUUID } from 'node:crypto';

import { installTimerTracking, startTracking, clearAll } from './timers.mjs';
import {
  leafOutcome, limitLogMessage, messageOf, nowUs, nsToUs, stateText, stepOutcome, thrownOutcome,
} from './outcome.mjs';

const LOG_LEVELS = ['debug', 'info', 'log', 'warn', 'error', 'success', 'always'];
const WHITELIST = [/^@openfn/];

/**
 * Build the runner. `deps`: { run (the runtime's default export), getModuleEntryPoint,
 * createLogger, needEsmHook (registers the runtime's ESM hook once), compile, send (protocol
 * frame out), versions: {node, runtime, compiler} }.
 * Returns { execute(message): Promise<void>, crash(error): void, busy(): boolean, warm(list) }.
 */
export function createRunner(deps) {
  const { send, versions } = deps;
  const hostConsole = globalThis.console;
  const exportCache = new Map(); // `${path}@${version}` → export names
  let current = null; // the active run's bookkeeping

  installTimerTracking();

  /** Names an adaptor exports, read from its namespace once per path and version. */
  async function exportNames(adaptor) {
    const key = `${adaptor.path}@${adaptor.version}`;
    if (exportCache.has(key)) return exportCache.get(key);
    const entry = await deps.getModuleEntryPoint(adaptor.name, adaptor.path);
    if (!entry) throw new Error(`no package.json in ${adaptor.path}`);
    if (!adaptor.prepared) deps.needEsmHook?.();
    const ns = await import(entry.path);
    // the linker's CJS interop: a namespace with only a populated `default` exports its keys
    let target = ns;
    if (ns.__esModule && ns.default?.default) target = ns.default.default;
    else if (Object.keys(ns).length === 1 && ns.default && Object.keys(ns.default).length) {
      target = ns.default;
    }
    const names = Object.keys(target).filter((n) => n !== 'default');
    exportCache.set(key, names);
    return names;
  }

  async function warm(adaptors) {
    const loaded = [];
    const errors = [];
    for (const adaptor of adaptors || []) {
      try {
        await exportNames(adaptor);
        loaded.push(adaptor.specifier);
      } catch (e) {
        errors.push({ specifier: adaptor.specifier, message: messageOf(e) });
      }
    }
    return { adaptors: loaded, errors };
  }

  function emitterFor(run) {
    const emitter = {};
    for (const level of LOG_LEVELS) {
      emitter[level] = (output) => onLog(run, output);
    }
    return emitter;
  }

  function onLog(run, output) {
    if (!output || typeof output !== 'object' || run.done) return;
    const { message, redacted } = limitLogMessage(output.message, run.options.log_payload_limit_mb);
    const event = {
      type: 'log',
      run_id: run.runId,
      step_id: run.open ? run.open.step_id : null,
      level: output.level === 'log' ? 'info' : output.level,
      source: output.name,
      message,
      time_us: output.time ? nsToUs(output.time) : nowUs(),
    };
    if (redacted) event.redacted = true;
    if (run.buffer) run.buffer.push(event);
    else send(event);
  }

  function rtLog(run, level, ...message) {
    run.loggers.rt[level](...message);
  }

  /** Compile each step in place; throws the compiler's CompileError. */
  async function compileSteps(run, steps) {
    const started = Date.now();
    rtLog(run, 'info', 'Compiling all workflow steps...');
    for (const step of steps) {
      if (!hasCode(step)) continue;
      const t0 = Date.now();
      const stepName = step.name || step.id;
      const adaptors = [];
      const linker = {};
      for (const spec of step.adaptors || []) {
        const adaptor = run.adaptors[spec];
        if (!adaptor) {
          const e = new Error(`adaptor ${spec} of step ${stepName} was not resolved`);
          e.severity = 'exception';
          e.type = 'AdaptorError';
          throw e;
        }
        let exports = [];
        try {
          exports = await exportNames(adaptor);
        } catch (e) {
          // compile in "import what is dangling" mode; the linker then reports the ImportError
          rtLog(run, 'warn', `Could not read the exports of ${spec}: ${messageOf(e)}`);
        }
        adaptors.push({ name: adaptor.name, exports });
        linker[adaptor.name] = { path: adaptor.path, version: adaptor.version };
      }
      const compiled = deps.compile(step.expression, { name: stepName, adaptors });
      step.expression = compiled.code;
      if (compiled.map) {
        step.sourceMap = { ...compiled.map, operations: compiled.operations ?? compiled.map.operations };
      }
      step.linker = linker;
      const secs = ((Date.now() - t0) / 1000).toFixed(3);
      rtLog(run, 'info', step.name ? `Compiled ${step.name} in ${secs}s` : `Compilation complete in ${secs}s`);
    }
    const total = ((Date.now() - started) / 1000).toFixed(2);
    rtLog(run, 'success', `Workflow compilation complete in ${total}s`);
  }

  function adaptorVersions(run) {
    const out = { node: versions.node, runtime: versions.runtime, compiler: versions.compiler };
    for (const adaptor of Object.values(run.adaptors)) {
      out[adaptor.name] ??= [];
      if (!out[adaptor.name].includes(adaptor.version)) out[adaptor.name].push(adaptor.version);
    }
    return out;
  }

  function sendRunStart(run) {
    send({ type: 'run-start', run_id: run.runId, versions: adaptorVersions(run), time_us: nowUs() });
    const buffered = run.buffer;
    run.buffer = null;
    for (const event of buffered) send(event);
  }

  /** Mirror of the runtime's FIFO: which step's output feeds the next start of a job. */
  function feed(run, producerStepId, next) {
    for (const jobId of next) {
      const target = run.stepsById[jobId];
      if (target && !hasCode(target)) {
        // a trigger passes its input through: its own targets are fed by the same producer
        feed(run, producerStepId, Object.keys(normaliseNext(target.next)));
        continue;
      }
      (run.inputs[jobId] ??= []).push(producerStepId);
    }
  }

  function stepComplete(run, { jobId, state, error, next, duration, mem }) {
    const open = run.open && run.open.job_id === jobId ? run.open : null;
    const stepId = open ? open.step_id : randomUUID();
    const outcome = stepOutcome(jobId, state, error);
    const aborting = outcome.reason === 'crash' || outcome.reason === 'kill';
    const followed = aborting ? [] : next || [];
    const { text, redacted } = stateText(state, run.options.payload_limit_mb);
    run.open = null;
    const record = { step_id: stepId, job_id: jobId, next: followed, ...outcome };
    run.completed.push(record);
    feed(run, stepId, followed);
    const usage = process.memoryUsage();
    send({
      type: 'step-complete',
      run_id: run.runId,
      step_id: stepId,
      job_id: jobId,
      ...outcome,
      state: text,
      redacted,
      duration_ms: duration ?? (open ? Date.now() - open.started : 0),
      mem: mem ? { job: mem.job, system: mem.system } : { job: usage.heapUsed, system: usage.rss },
      next: followed,
      time_us: nowUs(),
    });
  }

  function notify(run, event, payload) {
    if (run.done) return;
    if (event === 'job-start') {
      const jobId = payload.jobId;
      const fedBy = run.inputs[jobId]?.shift() ?? null;
      run.open = { step_id: randomUUID(), job_id: jobId, started: Date.now() };
      send({
        type: 'step-start',
        run_id: run.runId,
        step_id: run.open.step_id,
        job_id: jobId,
        input_from: fedBy,
        time_us: nowUs(),
      });
    } else if (event === 'job-complete') {
      stepComplete(run, payload);
    } else if (event === 'job-error') {
      stepComplete(run, payload);
    }
  }

  /** End the run: close an open step with the abort reason first, then run-complete. */
  function finish(run, outcome, finalState) {
    if (run.done) return;
    if (run.open && outcome.reason !== 'success' && outcome.reason !== 'fail') {
      stepComplete(run, {
        jobId: run.open.job_id,
        state: undefined,
        error: { severity: outcome.reason, type: outcome.error_type, message: outcome.error_message },
        next: [],
      });
    }
    if (run.buffer) sendRunStart(run);
    const { text, redacted } = stateText(finalState, run.options.payload_limit_mb);
    run.done = true;
    restore(run);
    send({
      type: 'run-complete',
      run_id: run.runId,
      ...outcome,
      final_state: text,
      redacted,
      time_us: nowUs(),
    });
    current = null;
  }

  function restore(run) {
    const left = clearAll();
    globalThis.console = hostConsole;
    if (left) process.stderr.write(`shim: cleared ${left} timer(s) left by run ${run.runId}\n`);
  }

  function makeLoggers(run) {
    const emitter = emitterFor(run);
    const sanitize = run.options.sanitize || 'none';
    const make = (name, level) => deps.createLogger(name, { logger: emitter, level, json: true, sanitize });
    return {
      rt: make('R/T', 'debug'),
      job: make('JOB', run.options.job_log_level || 'debug'),
      ada: make('ADA', 'debug'),
    };
  }

  async function execute(message) {
    const runId = message.run_id ?? null;
    if (current) {
      send({
        type: 'run-complete', run_id: runId, reason: 'exception', error_type: 'ShimBusy',
        error_message: `the shim is still running ${current.runId}`, final_state: null,
        redacted: false, time_us: nowUs(),
      });
      return;
    }
    const plan = message.plan;
    const options = message.options || {};
    const run = {
      runId,
      options,
      adaptors: message.adaptors || {},
      buffer: [],
      open: null,
      completed: [],
      inputs: {},
      stepsById: {},
      done: false,
    };
    current = run;
    run.loggers = makeLoggers(run);
    const steps = plan?.workflow?.steps;
    if (!runId || !Array.isArray(steps)) {
      finish(run, {
        reason: 'crash', error_type: 'ValidationError',
        error_message: 'invalid run message: it needs run_id and plan.workflow.steps (a list)',
      });
      return;
    }
    for (const step of steps) {
      if (step && step.id) run.stepsById[step.id] = step;
    }
    try {
      await compileSteps(run, steps);
    } catch (e) {
      if (run.done) return;
      sendRunStart(run);
      const compileError = e?.severity === 'exception' ? e : asCompileError(e);
      if (compileError.type === 'CompileError') {
        onLog(run, { level: 'info', name: 'RTE', message: ['Error occurred during compilation'] });
      }
      finish(run, thrownOutcome(compileError));
      return;
    }
    sendRunStart(run);
    startTracking();
    globalThis.console = run.loggers.ada;
    let result;
    try {
      result = await deps.run(
        { id: runId, workflow: plan.workflow, options: plan.options || {} },
        message.input ?? {},
        {
          logger: run.loggers.rt,
          jobLogger: run.loggers.job,
          disableEsmHook: true,
          statePropsToRemove: options.state_props_to_remove ?? ['configuration', 'response'],
          stateLimitMb: options.state_limit_mb,
          linker: {
            modules: linkerModules(run.adaptors),
            whitelist: WHITELIST,
            cacheKey: options.cache_key,
          },
          callbacks: { notify: (event, payload) => notify(run, event, payload) },
        },
      );
    } catch (e) {
      finish(run, thrownOutcome(e));
      return;
    }
    finish(run, leafOutcome(run.completed), result);
  }

  /** An uncaught exception or unhandled rejection: the active run crashes (ExecutionError). */
  function crash(error) {
    if (!current) return false;
    finish(current, {
      reason: 'crash',
      error_type: 'ExecutionError',
      error_message: messageOf(error),
    });
    return true;
  }

  return { execute, crash, warm, busy: () => current !== null };
}

function asCompileError(e) {
  if (e && (e.type === 'CompileError' || e.name === 'CompileError')) {
    return { type: 'CompileError', severity: 'crash', message: e.message };
  }
  return { type: 'CompileError', severity: 'crash', message: `compiler failed: ${messageOf(e)}` };
}

function linkerModules(adaptors) {
  const modules = {};
  for (const adaptor of Object.values(adaptors)) {
    // several versions of one name: each step's own linker entry picks its version
    modules[adaptor.name] ??= { path: adaptor.path, version: adaptor.version };
  }
  return modules;
}

/**
 * Whether the runtime runs this step as a job. It skips a step whose expression is empty (as it
 * skips a trigger: no step events, its input passes through), so an empty body is left
 * uncompiled, as ws-worker leaves it, rather than compiled into a step of no operations.
 */
function hasCode(step) {
  return typeof step.expression === 'string' && step.expression !== '';
}

function normaliseNext(next) {
  if (!next) return {};
  if (typeof next === 'string') return { [next]: true };
  return next;
}
