/**
 * Passes 3 and 4: the module's default export is the array of operations.
 *
 * The runtime runs `export default [op, ...]`; job authors write operations as top-level
 * calls. Pass 3 appends `export default [];` when the module has no default export; pass 4
 * moves every top-level call statement into that array, in source order, after any elements
 * already there, and records `{ name, line, order }` per moved call (the runtime names the
 * failing operation from it).
 */

/** Pass 3: append `export default [];` unless the module already has a default export. */
export function ensureDefaultExport(program) {
  if (program.body.some((s) => s.type === 'ExportDefaultDeclaration')) return;
  program.body.push({
    type: 'ExportDefaultDeclaration',
    declaration: { type: 'ArrayExpression', elements: [] },
  });
}

/**
 * Pass 4: move top-level call statements into the default array. Only when the last statement
 * is `export default [ ... ]`; otherwise the module is left as written (as OpenFn does).
 * @returns {Array<{name: string|undefined, line: number, order: number}>}
 */
export function collectOperations(program) {
  const target = program.body[program.body.length - 1];
  if (target?.type !== 'ExportDefaultDeclaration' || target.declaration.type !== 'ArrayExpression') return [];
  const operations = [];
  const kept = [];
  for (const statement of program.body) {
    const expression = statement.expression;
    if (statement.type === 'ExpressionStatement' && expression.type === 'CallExpression') {
      operations.push({ name: operationName(expression), line: expression.loc?.start.line ?? -1, order: operations.length + 1 });
      target.declaration.elements.push(expression);
    } else {
      kept.push(statement);
    }
  }
  program.body = kept;
  return operations;
}

/** The callee's name; for a deferred chain, the name of the operation it defers. */
function operationName(expression) {
  const { callee } = expression;
  if (callee.type !== 'Identifier') return undefined;
  const deferred = expression.arguments[0];
  if (callee.name === '_defer' && !callee.loc && deferred?.callee?.type === 'Identifier') return deferred.callee.name;
  return callee.name;
}
