/**
 * Pass 1: lazy state. `get($.data.url)` becomes `get(state => state.data.url)`.
 *
 * `$` is shorthand for "the state at the time this operation runs", so each `$` member chain
 * is renamed to `state` and the argument of the enclosing operation call that contains it is
 * wrapped in `state => ...`. Rules (reference §2.2):
 * - only `$` at the root of a member chain (`$.a`, `$.a?.b`, `$['x']`, `$.fn()`) is rewritten;
 *   a `$` declared by an enclosing function or block is the user's own variable;
 * - the operation is the nearest enclosing call; reaching a statement first is an error
 *   (`const x = $.data`, `$.data = 1`);
 * - a method call on the chain (`$.items.map(f)`) or on `state` (`state.fn($.x)`) is part of
 *   the expression, so the whole call is wrapped, not its callee or argument;
 * - an argument that already is `state => ...` is kept; any other arrow is an error.
 */
import { arrow, forEachChild, ignoredObjectInits, isStatementLike, replaceInSlot } from './ast.mjs';
import { LazyStateError } from './errors.mjs';
import { shadowedDollars } from './scope.mjs';

/** Rewrite every lazy `$` reference in `program`, in place. */
export function transformLazyState(program) {
  const ignored = ignoredObjectInits(program);
  const slots = new Map();
  const roots = [];
  const index = (node) => {
    forEachChild(node, (child, key, i) => {
      if (ignored.has(child)) return;
      slots.set(child, { parent: node, key, index: i });
      if (child.type === 'Identifier' && child.name === '$' && node.type === 'MemberExpression' && key === 'object') {
        roots.push(child);
      }
      index(child);
    });
  };
  index(program);
  if (roots.length === 0) return;

  const shadowed = shadowedDollars(program);
  for (const dollar of roots) {
    if (shadowed.has(dollar)) continue;
    dollar.name = 'state';
    const argument = operationArgument(dollar, slots);
    if (argument.type === 'ArrowFunctionExpression') {
      assertStateArrow(argument);
      continue;
    }
    const wrapper = arrow('state', argument);
    const slot = slots.get(argument);
    replaceInSlot(slot, wrapper);
    slots.set(wrapper, slot);
    slots.set(argument, { parent: wrapper, key: 'body', index: null });
  }
}

/** Walk up from a `$` to the node passed as an argument to the operation call. */
function operationArgument(dollar, slots) {
  let last = dollar;
  for (;;) {
    const { parent, key } = slots.get(last);
    if (parent.type === 'CallExpression') {
      const methodCallOnChain = key === 'callee' && (last.type === 'MemberExpression' || last.type === 'ChainExpression');
      const stateMethodArgument =
        key === 'arguments' &&
        parent.callee.type === 'MemberExpression' &&
        parent.callee.object.type === 'Identifier' &&
        parent.callee.object.name === 'state';
      if (!methodCallOnChain && !stateMethodArgument) return last;
    } else if (isStatementLike(parent) || parent.type === 'Program') {
      throw new LazyStateError('Must be inside an operation', dollar.loc.start);
    }
    last = parent;
  }
}

/**
 * An existing arrow argument must be `state => ...`, or `$` would not mean the state. The
 * error points at the arrow, with OpenFn's wording.
 */
function assertStateArrow(fn) {
  if (fn.params.length !== 1) {
    throw new LazyStateError('parent has wrong arity', fn.loc.start);
  }
  const [param] = fn.params;
  if (param.type !== 'Identifier' || param.name !== 'state') {
    const name = param.type === 'Identifier' ? param.name : 'the parameter';
    throw new LazyStateError(`parameter "${name}" should be called "state"`, fn.loc.start);
  }
}
