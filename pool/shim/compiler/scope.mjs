/**
 * Lexical scope analysis for job modules.
 *
 * Two passes use it: lazy state (is `$` declared by an enclosing function or block?) and add
 * imports (which identifiers are free, i.e. must come from the adaptor?). OpenFn's compiler
 * uses ast-types scopes plus a few syntactic shortcuts; we resolve real ES scoping instead
 * (block scopes, hoisted `var` and functions, params with defaults, catch params, class names,
 * named function expressions, `arguments`), so `a[b]` counts `b` as used and `{ x }` counts
 * `x`, while property keys, labels and member names never do.
 */
import { forEachChild, ignoredObjectInits } from './ast.mjs';

class Scope {
  /** @param {Scope|null} parent @param {'program'|'function'|'block'} kind */
  constructor(parent, kind) {
    this.parent = parent;
    this.kind = kind;
    this.names = new Set();
  }

  /** The scope `var` declarations hoist to. */
  hoistTarget() {
    let scope = this;
    while (scope.kind === 'block') scope = scope.parent;
    return scope;
  }

  /** The scope that declares `name` for a reference made here, or null if it is free. */
  lookup(name) {
    for (let scope = this; scope; scope = scope.parent) {
      if (scope.names.has(name)) return scope;
    }
    return null;
  }
}

/**
 * Collect every identifier reference with the scope it is made from.
 *
 * Declarations are registered while walking and resolved only afterwards, so hoisting
 * (using a function before its declaration) resolves correctly.
 *
 * @returns {Array<{node: object, scope: Scope}>} references in source order
 */
export function collectReferences(program) {
  const references = [];
  const root = new Scope(null, 'program');
  const ignored = ignoredObjectInits(program);

  const visit = (node, scope) => {
    const handler = HANDLERS[node.type];
    if (handler) handler(node, scope);
    else forEachChild(node, (child) => visit(child, scope));
  };

  const visitAll = (nodes, scope) => {
    for (const n of nodes) if (n) visit(n, scope);
  };

  /** Declare the names bound by a pattern; defaults and computed keys are references. */
  const declare = (pattern, target, exprScope) => {
    switch (pattern.type) {
      case 'Identifier':
        target.names.add(pattern.name);
        break;
      case 'ObjectPattern':
        for (const prop of pattern.properties) {
          if (prop.type === 'RestElement') declare(prop.argument, target, exprScope);
          else {
            if (prop.computed) visit(prop.key, exprScope);
            declare(prop.value, target, exprScope);
          }
        }
        break;
      case 'ArrayPattern':
        for (const el of pattern.elements) if (el) declare(el, target, exprScope);
        break;
      case 'AssignmentPattern':
        declare(pattern.left, target, exprScope);
        visit(pattern.right, exprScope);
        break;
      case 'RestElement':
        declare(pattern.argument, target, exprScope);
        break;
      default: // a MemberExpression target in for-in/of heads
        visit(pattern, exprScope);
    }
  };

  const visitFunction = (fn, scope) => {
    const fnScope = new Scope(scope, 'function');
    if (fn.type === 'FunctionExpression' && fn.id) fnScope.names.add(fn.id.name);
    if (fn.type !== 'ArrowFunctionExpression') fnScope.names.add('arguments');
    for (const param of fn.params) declare(param, fnScope, fnScope);
    if (fn.body.type === 'BlockStatement') visitAll(fn.body.body, fnScope);
    else visit(fn.body, fnScope);
  };

  const visitClass = (cls, scope) => {
    if (cls.superClass) visit(cls.superClass, scope);
    const classScope = new Scope(scope, 'block');
    if (cls.id) classScope.names.add(cls.id.name);
    for (const member of cls.body.body) {
      if (member.type === 'StaticBlock') {
        visitAll(member.body, new Scope(classScope, 'function'));
        continue;
      }
      if (member.computed) visit(member.key, classScope);
      if (member.value) visit(member.value, classScope);
    }
  };

  const keyed = (node, scope) => {
    if (node.computed) visit(node.key, scope);
    visit(node.value, scope);
  };

  const HANDLERS = {
    Identifier: (node, scope) => references.push({ node, scope }),
    VariableDeclaration: (node, scope) => {
      const target = node.kind === 'var' ? scope.hoistTarget() : scope;
      for (const decl of node.declarations) {
        declare(decl.id, target, scope);
        if (decl.init && !ignored.has(decl.init)) visit(decl.init, scope);
      }
    },
    FunctionDeclaration: (node, scope) => {
      if (node.id) scope.names.add(node.id.name);
      visitFunction(node, scope);
    },
    FunctionExpression: visitFunction,
    ArrowFunctionExpression: visitFunction,
    ClassDeclaration: (node, scope) => {
      if (node.id) scope.names.add(node.id.name);
      visitClass(node, scope);
    },
    ClassExpression: visitClass,
    BlockStatement: (node, scope) => visitAll(node.body, new Scope(scope, 'block')),
    ForStatement: (node, scope) => {
      const head = new Scope(scope, 'block');
      visitAll([node.init, node.test, node.update, node.body], head);
    },
    ForInStatement: (node, scope) => {
      const head = new Scope(scope, 'block');
      visitAll([node.left, node.right, node.body], head);
    },
    SwitchStatement: (node, scope) => {
      visit(node.discriminant, scope);
      visitAll(node.cases, new Scope(scope, 'block'));
    },
    CatchClause: (node, scope) => {
      const catchScope = new Scope(scope, 'block');
      if (node.param) declare(node.param, catchScope, catchScope);
      visit(node.body, catchScope);
    },
    ImportDeclaration: (node) => {
      for (const spec of node.specifiers) root.names.add(spec.local.name);
    },
    ExportNamedDeclaration: (node, scope) => {
      if (node.declaration) visit(node.declaration, scope);
      else if (!node.source) for (const spec of node.specifiers) visit(spec.local, scope);
    },
    ExportAllDeclaration: () => {},
    MemberExpression: (node, scope) => {
      visit(node.object, scope);
      if (node.computed) visit(node.property, scope);
    },
    Property: keyed,
    MethodDefinition: keyed,
    PropertyDefinition: (node, scope) => {
      if (node.computed) visit(node.key, scope);
      if (node.value) visit(node.value, scope);
    },
    LabeledStatement: (node, scope) => visit(node.body, scope),
    BreakStatement: () => {},
    ContinueStatement: () => {},
    MetaProperty: () => {},
  };
  HANDLERS.ForOfStatement = HANDLERS.ForInStatement;

  visitAll(program.body, root);
  return references;
}

/**
 * Names used but declared nowhere in the module, in order of first use in the original source
 * (passes move code around, so tree order is not source order).
 * @returns {string[]}
 */
export function freeNames(program) {
  const firstUse = new Map();
  for (const { node, scope } of collectReferences(program)) {
    if (scope.lookup(node.name)) continue;
    const at = node.start ?? Infinity;
    if (!(firstUse.get(node.name) <= at)) firstUse.set(node.name, at);
  }
  return [...firstUse].sort((a, b) => a[1] - b[1]).map(([name]) => name);
}

/**
 * The `$` identifiers that are declared by an enclosing function or block (not the module
 * top level: OpenFn rewrites `$` even when the module itself declares it).
 * @returns {Set<object>} the shadowed `$` Identifier nodes
 */
export function shadowedDollars(program) {
  const shadowed = new Set();
  for (const { node, scope } of collectReferences(program)) {
    if (node.name !== '$') continue;
    const owner = scope.lookup('$');
    if (owner && owner.kind !== 'program') shadowed.add(node);
  }
  return shadowed;
}
