/**
 * The one error type the compiler throws.
 *
 * Its shape is what the engine reports for a compile failure (reference §4.2): name and type
 * `CompileError`, severity `crash`, message `<step>: <reason> (<line>:<column>)`.
 */
export class CompileError extends Error {
  /**
   * @param {string} step   step name or id, prefixed to the message
   * @param {string} reason acorn's message (already ending in "(l:c)") or our own
   * @param {{line: number, column: number} | null} pos 1-based line, 0-based column
   * @param {string} subtype 'SyntaxError' | 'LazyStateError' | 'InputError'
   */
  constructor(step, reason, pos, subtype) {
    const where = pos && !/\(\d+:\d+\)$/.test(reason) ? ` (${pos.line}:${pos.column})` : '';
    super(`${step}: ${reason}${where}`);
    this.name = 'CompileError';
    this.type = 'CompileError';
    this.subtype = subtype;
    this.severity = 'crash';
    this.step = step;
    this.line = pos ? pos.line : null;
    this.column = pos ? pos.column : null;
  }
}

/**
 * A lazy-state misuse found by a pass; compile() turns it into a CompileError with the step.
 * Worded as OpenFn's compiler words it (`Lazy State Error: Must be inside an operation`), so a
 * user sees the same message on either worker.
 */
export class LazyStateError extends Error {
  constructor(reason, loc) {
    super(`Lazy State Error: ${reason}`);
    this.name = 'LazyStateError';
    this.pos = { line: loc.line, column: loc.column };
  }
}
