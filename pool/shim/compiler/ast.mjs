/**
 * ESTree helpers shared by the compiler passes.
 *
 * The passes mutate acorn's tree in place and need to know, for any node, where it hangs
 * (parent, key, index) so they can splice generated nodes in. acorn-walk's walkers do not
 * expose the slot, so this module keeps the generic child iteration in one place.
 */

/** Keys that hold positions or metadata rather than child nodes. */
const NON_CHILD_KEYS = new Set(['type', 'start', 'end', 'loc', 'range', 'raw']);

/**
 * Call `visit(child, key, index)` for every direct child node of `node`, in source order
 * (index is null for single-node fields).
 */
export function forEachChild(node, visit) {
  for (const key of Object.keys(node)) {
    if (NON_CHILD_KEYS.has(key)) continue;
    const value = node[key];
    if (Array.isArray(value)) {
      for (let i = 0; i < value.length; i++) {
        if (value[i] && typeof value[i].type === 'string') visit(value[i], key, i);
      }
    } else if (value && typeof value.type === 'string') {
      visit(value, key, null);
    }
  }
}

/** Put `replacement` in the slot a node occupies in its parent. */
export function replaceInSlot(slot, replacement) {
  if (slot.index === null) slot.parent[slot.key] = replacement;
  else slot.parent[slot.key][slot.index] = replacement;
}

/**
 * The object literals initialising `const|let|var x = { ... }` directly in the Program body.
 *
 * OpenFn's compiler skips these entirely (kit#1029: huge mapping objects made compilation
 * slow): no `$` rewriting, no promise rewriting, no adaptor imports for names used only
 * inside them. We do the same so a job behaves identically on both engines.
 * @returns {Set<object>} the ObjectExpression nodes every pass must not descend into
 */
export function ignoredObjectInits(program) {
  const ignored = new Set();
  for (const statement of program.body) {
    if (statement.type !== 'VariableDeclaration') continue;
    for (const declarator of statement.declarations) {
      if (declarator.init?.type === 'ObjectExpression') ignored.add(declarator.init);
    }
  }
  return ignored;
}

/** Every ESTree node type that ast-types classes as a Statement or Declaration. */
export function isStatementLike(node) {
  return (
    node.type.endsWith('Statement') ||
    node.type.endsWith('Declaration') ||
    node.type === 'MethodDefinition' ||
    node.type === 'PropertyDefinition' ||
    node.type === 'StaticBlock'
  );
}

export const identifier = (name, loc) => ({ type: 'Identifier', name, ...(loc ? { loc } : {}) });

export const arrow = (paramName, body) => ({
  type: 'ArrowFunctionExpression',
  id: null,
  params: [identifier(paramName)],
  body,
  expression: true,
  async: false,
  generator: false,
});

export const call = (callee, args, loc) => ({
  type: 'CallExpression',
  callee,
  arguments: args,
  optional: false,
  ...(loc ? { loc } : {}),
});

export const literal = (value) => ({ type: 'Literal', value, raw: JSON.stringify(value) });

/** `import { a, b as c } from "source"` from [[imported, local], ...]. */
export const importDeclaration = (pairs, source) => ({
  type: 'ImportDeclaration',
  specifiers: pairs.map(([imported, local]) => ({
    type: 'ImportSpecifier',
    imported: identifier(imported),
    local: identifier(local),
  })),
  source: literal(source),
  attributes: [],
});
