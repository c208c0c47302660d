// Timer tracking: a run must not leave timers behind in a warm shim (openfn-engine.md §8.1.5).
//
// The runtime reads the global setTimeout/setInterval each time it builds a step's sandbox, and
// adaptors use the globals too, so wrapping the globals once at boot covers both. Each handle
// created while tracking is on is remembered until it fires or is cleared; `clearAll()` at the
// end of a run clears whatever is left, so an interval cannot keep logging into the next run.

const live = new Set();
let tracking = false;

const real = {
  setTimeout: globalThis.setTimeout,
  setInterval: globalThis.setInterval,
  setImmediate: globalThis.setImmediate,
  clearTimeout: globalThis.clearTimeout,
  clearInterval: globalThis.clearInterval,
  clearImmediate: globalThis.clearImmediate,
};

function forget(handle) {
  live.delete(handle);
}

/** Replace the global timer functions with tracking wrappers (once, at boot). */
export function installTimerTracking() {
  globalThis.setTimeout = function setTimeout(fn, ms, ...args) {
    if (typeof fn !== 'function') return real.setTimeout(fn, ms, ...args);
    let handle;
    const wrapped = (...a) => {
      forget(handle);
      return fn(...a);
    };
    handle = real.setTimeout(wrapped, ms, ...args);
    if (tracking) live.add(handle);
    return handle;
  };
  globalThis.setInterval = function setInterval(fn, ms, ...args) {
    const handle = real.setInterval(fn, ms, ...args);
    if (tracking) live.add(handle);
    return handle;
  };
  globalThis.setImmediate = function setImmediate(fn, ...args) {
    if (typeof fn !== 'function') return real.setImmediate(fn, ...args);
    let handle;
    const wrapped = (...a) => {
      forget(handle);
      return fn(...a);
    };
    handle = real.setImmediate(wrapped, ...args);
    if (tracking) live.add(handle);
    return handle;
  };
  globalThis.clearTimeout = function clearTimeout(handle) {
    forget(handle);
    return real.clearTimeout(handle);
  };
  globalThis.clearInterval = function clearInterval(handle) {
    forget(handle);
    return real.clearInterval(handle);
  };
  globalThis.clearImmediate = function clearImmediate(handle) {
    forget(handle);
    return real.clearImmediate(handle);
  };
}

/** Start remembering new timers (a run begins). */
export function startTracking() {
  tracking = true;
}

/** Stop remembering and clear every timer the run left behind; returns how many there were. */
export function clearAll() {
  tracking = false;
  const count = live.size;
  for (const handle of live) {
    // one clear function cancels any kind of Node timer object; immediates need their own
    if (handle && handle.constructor && handle.constructor.name === 'Immediate') {
      real.clearImmediate(handle);
    } else {
      real.clearTimeout(handle);
    }
  }
  live.clear();
  return count;
}
