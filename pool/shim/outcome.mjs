// Reasons, error types and payload redaction: the rules of openfn-engine.md §4 and §5.4, kept
// apart from the run loop so they read as the table they implement.

export const REDACTED_LOG = '[REDACTED: Message length exceeds payload limit]';

/** Microseconds since the epoch, as an integer (the protocol's `time_us`). */
export function nowUs() {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

/** Convert @openfn/logger's nanosecond timestamp string to integer microseconds. */
export function nsToUs(ns) {
  try {
    return Number(BigInt(ns) / 1000n);
  } catch {
    return nowUs();
  }
}

/**
 * A step's outcome from the runtime's error (job-error) or its output state (job-complete):
 * an error's severity is the reason (default crash); otherwise `state.errors[jobId]` means fail.
 * Fail errors are named by their class (JobError, RuntimeError, AdaptorError) as ws-worker
 * reports them; crash/kill errors by their subtype first (ReferenceError, ...).
 */
export function stepOutcome(jobId, state, error) {
  if (error) {
    const reason = error.severity ?? 'crash';
    const type = reason === 'fail'
      ? (error.name || error.type || 'Error')
      : (error.subtype || error.type || error.name || 'Error');
    return { reason, error_type: type, error_message: messageOf(error) };
  }
  const recorded = state && typeof state === 'object' ? state.errors?.[jobId] : undefined;
  if (recorded) {
    return {
      reason: 'fail',
      error_type: recorded.type || recorded.name || 'Error',
      error_message: messageOf(recorded),
    };
  }
  return { reason: 'success', error_type: null, error_message: null };
}

/** The run's outcome when `run()` threw: its severity (default crash), typed by class. */
export function thrownOutcome(error) {
  return {
    reason: error?.severity ?? 'crash',
    error_type: error?.type || error?.name || 'Error',
    error_message: messageOf(error),
  };
}

/**
 * The run's outcome when `run()` returned: fail if any leaf step (one with no next step)
 * failed — fails upstream were handled by their edges — else success.
 */
export function leafOutcome(completed) {
  const failedLeaf = completed.find((s) => s.next.length === 0 && s.reason === 'fail');
  if (failedLeaf) {
    return {
      reason: 'fail',
      error_type: failedLeaf.error_type,
      error_message: failedLeaf.error_message,
    };
  }
  return { reason: 'success', error_type: null, error_message: null };
}

/**
 * An error's message as ws-worker reports it: `error.message` as it is, even when empty (a job
 * rejecting with a non-Error becomes a JobError with message "", and ws-worker sends ""), so
 * only an error with no message at all is described some other way.
 */
export function messageOf(error) {
  if (error === undefined || error === null) return 'unknown error';
  if (typeof error === 'string') return error;
  if (typeof error.message === 'string') return error.message;
  return String(error);
}

/**
 * JSON text of a state, and whether it was redacted: over `limitMb` its `data` becomes
 * "[REDACTED]" (other top-level keys survive, as in engine-multi). `undefined` (a step that
 * returned nothing) gives `text: null`.
 */
export function stateText(state, limitMb) {
  if (state === undefined || state === null) return { text: null, redacted: false };
  let text = JSON.stringify(state);
  if (text === undefined) return { text: null, redacted: false };
  if (limitMb > 0 && Buffer.byteLength(text, 'utf8') > limitMb * 1024 * 1024) {
    // only `data` is replaced; the flag goes on the event, never into the state (as
    // engine-multi's ensure-payload-size does)
    const redacted = typeof state === 'object' && !Array.isArray(state)
      ? { ...state, data: '[REDACTED]' }
      : { data: '[REDACTED]' };
    text = JSON.stringify(redacted);
    return { text, redacted: true };
  }
  return { text, redacted: false };
}

/** A log message (list) within the log payload limit, or the redaction notice. */
export function limitLogMessage(message, limitMb) {
  if (!(limitMb > 0)) return { message, redacted: false };
  let size;
  try {
    size = Buffer.byteLength(JSON.stringify(message) ?? '', 'utf8');
  } catch {
    return { message: ['[unserialisable log message]'], redacted: true };
  }
  if (size > limitMb * 1024 * 1024) return { message: [REDACTED_LOG], redacted: true };
  return { message, redacted: false };
}
