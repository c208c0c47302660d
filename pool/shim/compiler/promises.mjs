/**
 * Pass 2: promise chains on top-level operations become `_defer(...)`.
 *
 * `fn(x).then(a)` in the operations array would call `.then` on the operation function itself
 * (a TypeError at run time), so the chain is split into the operation and a function of its
 * promise: `_defer(fn(x), p => p.then(a))`, with a `.catch(h)` attached directly to the
 * operation passed as the third argument (`defer` calls it with the error and that
 * operation's input state). Only chains at "top scope" are rewritten: not inside any function
 * or block, though arguments of other calls count (`each(x, post(y).then(f))`).
 */
import { arrow, call, forEachChild, identifier, ignoredObjectInits, importDeclaration, replaceInSlot } from './ast.mjs';

const SCOPE_BOUNDARIES = new Set(['ArrowFunctionExpression', 'FunctionExpression', 'FunctionDeclaration', 'BlockStatement']);

/** Rewrite top-scope promise chains in `program`, in place; add the `_defer` import if used. */
export function transformPromises(program) {
  const ignored = ignoredObjectInits(program);
  let used = false;
  const visit = (node) => {
    forEachChild(node, (child, key, index) => {
      if (ignored.has(child) || SCOPE_BOUNDARIES.has(child.type)) return;
      if (isPromiseLink(child)) {
        const deferred = rebuildChain(child);
        if (deferred) {
          replaceInSlot({ parent: node, key, index }, deferred);
          used = true;
          return;
        }
      }
      visit(child);
    });
  };
  visit(program);
  if (used) addDeferImport(program);
}

/** `<x>.then(...)` or `<x>.catch(...)`. */
function isPromiseLink(node) {
  return (
    node.type === 'CallExpression' &&
    node.callee.type === 'MemberExpression' &&
    !node.callee.computed &&
    (node.callee.property.name === 'then' || node.callee.property.name === 'catch')
  );
}

/**
 * Split `op(...).l1(...).l2(...)` into `_defer(op(...), p => p.l1(...).l2(...), catchFn?)`.
 * Returns null (leave the code alone) when the chain does not start with a call,
 * e.g. `promise.then(f)`.
 */
function rebuildChain(outer) {
  const links = []; // outermost first
  let op = outer;
  while (isPromiseLink(op)) {
    links.push(op);
    op = op.callee.object;
  }
  if (op.type !== 'CallExpression') return null;

  const innermost = links[links.length - 1];
  const args = [op];
  if (innermost.callee.property.name === 'catch') {
    const handler = innermost.arguments[0] ?? identifier('undefined');
    if (links.length > 1) {
      links[links.length - 2].callee.object = identifier('p');
      args.push(arrow('p', outer));
    } else {
      args.push(identifier('undefined'));
    }
    args.push(handler);
  } else {
    innermost.callee.object = identifier('p');
    args.push(arrow('p', outer));
  }
  return call(identifier('_defer'), args, outer.loc);
}

/**
 * `import { defer as _defer } from "@openfn/runtime"` after the last import, unless `_defer`
 * is already imported. (OpenFn skips it whenever *any* `@openfn/runtime` import exists, which
 * leaves `_defer` undefined if that import is not `defer as _defer`.)
 */
function addDeferImport(program) {
  const imports = program.body.filter((s) => s.type === 'ImportDeclaration');
  if (imports.some((s) => s.specifiers.some((spec) => spec.local.name === '_defer'))) return;
  const position = imports.length ? program.body.indexOf(imports[imports.length - 1]) + 1 : 0;
  program.body.splice(position, 0, importDeclaration([['defer', '_defer']], '@openfn/runtime'));
}
