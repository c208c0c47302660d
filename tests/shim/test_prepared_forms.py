"""Prepared adaptors against their plain packages: the pool's bundle of each installed test
adaptor exports the same names (each with the same ``typeof``) and gives the same result for
every operation tried; bundles that would differ stay plain, with the reason, logged once.

Real esbuild, real Node (WORKER_NODE_BINARY), the real adaptors from the checkout's repo,
linked into a fresh repo so the preparing happens here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pool.adaptors import Adaptor, AdaptorRepo
from pool.prepare import PLAIN, PREPARED, STAMP, PreparedRepo, esbuild_version
from tests.linked_repo import linked_repo
from tests.shim.conftest import NODE, Runner, start_shim

COMMON = "@openfn/language-common@3.3.4"
HTTP = "@openfn/language-http@7.2.10"
COLLECTIONS = "@openfn/language-collections@0.8.0"

# operations that need no network, per adaptor: (expression, input)
OPERATIONS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    COMMON: [
        ("fn(s => ({ ...s, data: { n: s.data.n + 1 } }))", {"data": {"n": 41}}),
        ("each('$.data.items[*]', fn(s => { s.data.seen = (s.data.seen || 0) + 1; return s; }))",
         {"data": {"items": [1, 2, 3]}}),
        ("fn(s => ({ data: { v: dataValue('a.b')(s), src: sourceValue('$.data.a.b')(s) } }))",
         {"data": {"a": {"b": 7}}}),
        ("merge('$.data.rows', fields(field('tag', 'x')))",
         {"data": {"rows": [{"id": 1}, {"id": 2}]}}),
        ("fn(s => ({ data: { chunks: chunk([1, 2, 3, 4, 5], 2), human: humanProper('ab cd'), "
         "emoji: scrubEmojis('a\U0001F600b'), keys: splitKeys({ a: 1, b: 2 }, ['a']), "
         "arr: toArray('x'), date: dateFns.format(new Date(0), 'yyyy-MM-dd'), "
         "lodash: _.chunk([1, 2, 3], 2), enc: util.encode('hi'), dec: util.decode('aGk=') } }))",
         {"data": {}}),
        ("parseCsv('a,b\\n1,2\\n3,4')", {"data": {}}),
        ("cursor('2024-01-01')", {"data": {}}),
        ("fn(s => { throw new Error('boom at ' + typeof execute); })", {"data": {}}),
    ],
    HTTP: [
        ("fn(s => ({ data: { enc: util.encode('x'), id: typeof util.uuid() } }))", {"data": {}}),
        ("parseXML('<a><b>1</b><b>2</b></a>', $ => $('b').map((i, el) => $(el).text()).get())",
         {"data": {}}),
        ("parseCsv('a,b\\n1,2')", {"data": {}}),
        ("each('$.data.items[*]', fn(s => s))", {"data": {"items": [1, 2]}}),
        ("get('not a url at all')", {"data": {}}),
    ],
    COLLECTIONS: [
        ("fn(s => ({ data: Object.fromEntries(Object.entries(collections)"
         ".map(([k, v]) => [k, typeof v])) }))", {"data": {}}),
        ("collections.get('things', '*')", {"data": {}, "configuration": {
            "collections_endpoint": "http://127.0.0.1:9/collections", "collections_token": "t"}}),
    ],
}


@pytest.fixture(scope="module")
def prepared_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[AdaptorRepo, PreparedRepo]:
    repo = AdaptorRepo(str(linked_repo(tmp_path_factory.mktemp("prepared") / "repo")),
                       offline=True)
    return repo, PreparedRepo(repo)


def forms(prepared_repo: tuple[AdaptorRepo, PreparedRepo], spec: str) -> tuple[Adaptor, Adaptor]:
    repo, prepared = prepared_repo
    plain = repo.resolve(spec)
    logged: list[str] = []
    assert prepared.prepare(plain, NODE, logged.append) == PREPARED, logged
    bundled = prepared.form(plain)
    assert bundled.path != plain.path
    return plain, bundled


def node_exports(entry_dir: str) -> dict[str, Any]:
    """Export names and typeof, read by Node through the linker's own entry-point lookup."""
    script = (
        "const { getModuleEntryPoint } = await import('@openfn/runtime');"
        f"const e = await getModuleEntryPoint('x', {json.dumps(entry_dir)});"
        "const ns = await import(e.path);"
        "const t = Object.keys(ns).length === 1 && ns.default ? ns.default : ns;"
        "const deep = {};"
        "for (const [k, v] of Object.entries(t)) deep[k] = v && typeof v === 'object' ? "
        "  Object.fromEntries(Object.entries(v).map(([a, b]) => [a, typeof b])) : typeof v;"
        "console.log(JSON.stringify(deep));")
    out = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True,
                         text=True, timeout=60, check=True,
                         cwd=str(Path(__file__).resolve().parents[2] / "pool" / "shim"))
    return json.loads(out.stdout.strip().splitlines()[-1])


def comparable(result: Any) -> dict[str, Any]:
    """A run's outcome without what differs between any two runs (times, ids, memory)."""
    steps = [{k: e[k] for k in ("reason", "error_type", "error_message", "state")}
             for e in result.of("step-complete")]
    return {"reason": result.reason, "error_type": result.complete.get("error_type"),
            "error_message": result.complete.get("error_message"), "final": result.final,
            "steps": steps}


@pytest.mark.parametrize("spec", [COMMON, HTTP, COLLECTIONS])
def test_prepared_and_plain_forms_export_the_same_names_and_types(prepared_repo, spec):
    plain, bundled = forms(prepared_repo, spec)
    plain_exports = node_exports(plain.path)
    assert plain_exports, f"{spec} exports nothing?"
    assert node_exports(bundled.path) == plain_exports


@pytest.mark.parametrize("spec", [COMMON, HTTP, COLLECTIONS])
def test_prepared_and_plain_forms_give_the_same_result_for_each_operation(
        prepared_repo, spec, shim_home):
    plain, bundled = forms(prepared_repo, spec)
    # as Lightning plans it, a collections job runs beside its step's own adaptor
    specs = [COMMON, spec] if spec == COLLECTIONS else [spec]
    common = prepared_repo[0].resolve(COMMON)
    shim = start_shim(shim_home)
    try:
        for expression, state in OPERATIONS[spec]:
            outcomes = []
            for adaptor in (plain, bundled):
                entry = {"name": adaptor.name, "version": adaptor.version, "path": adaptor.path,
                         "prepared": adaptor is bundled}
                runner = Runner(shim, {spec: entry, COMMON: {
                    "name": common.name, "version": common.version, "path": common.path}}
                    if spec == COLLECTIONS else {spec: entry})
                outcomes.append(comparable(runner.run(
                    [{"id": "a", "expression": expression, "adaptors": specs}], input=state)))
            assert outcomes[0] == outcomes[1], expression
            assert outcomes[0]["reason"] in ("success", "fail"), (expression, outcomes[0])
    finally:
        shim.close()


def fake_adaptor(repo_dir: Path, name: str, source: str) -> Adaptor:
    """An ESM package (``index.js`` and a ``side.js``) installed in the repo's alias layout."""
    folder = repo_dir / "node_modules" / "@openfn" / f"language-{name}_1.0.0"
    folder.mkdir(parents=True)
    (folder / "side.js").write_text("export const x = 1;\n")
    (folder / "package.json").write_text(json.dumps({
        "name": f"@openfn/language-{name}", "version": "1.0.0", "type": "module",
        "exports": "./index.js"}))
    (folder / "index.js").write_text(source)
    return Adaptor(f"@openfn/language-{name}@1.0.0", f"@openfn/language-{name}", "1.0.0",
                   str(folder))


@pytest.mark.parametrize("name, source, reason", [
    # the export's type depends on where the code lives: the bundle's differs
    ("shape", "export const where = import.meta.url.includes('/.prepared/') ? 1 : 'plain';\n"
              "export const fn = () => 1;\n", "the bundle's exports differ: where is number"),
    # a file found next to the module at load time: the bundle lives elsewhere, cannot load
    ("load", "const side = await import(new URL('./side.js', import.meta.url).href);\n"
             "export const x = side.x;\n", "the bundle does not load"),
    # esbuild cannot bundle it
    ("build", "import missing from './missing.js';\nexport const x = missing;\n",
     "esbuild failed: Could not resolve"),
])
def test_a_bundle_that_would_differ_stays_plain_with_its_reason_logged_once(
        tmp_path, name, source, reason):
    repo = AdaptorRepo(str(tmp_path / "repo"), offline=True)
    adaptor = fake_adaptor(repo.repo_dir, name, source)
    prepared = PreparedRepo(repo)
    logged: list[str] = []
    assert prepared.prepare(adaptor, NODE, logged.append) == PLAIN
    assert prepared.prepare(adaptor, NODE, logged.append) == PLAIN  # decided: not tried again
    assert len(logged) == 1 and reason in logged[0], logged
    assert f"{adaptor.name}@1.0.0 stays plain" in logged[0]
    stamp = prepared.stamp(adaptor)
    assert stamp is not None and stamp["status"] == PLAIN and reason in stamp["reason"]
    assert prepared.form(adaptor) == adaptor  # shims keep loading the package itself
    assert not (prepared.folder(adaptor) / "adaptor.mjs").exists()


def test_a_new_esbuild_or_a_reinstalled_adaptor_prepares_it_again(tmp_path):
    repo = AdaptorRepo(str(tmp_path / "repo"), offline=True)
    adaptor = fake_adaptor(repo.repo_dir, "fresh", "export const fn = () => 1;\n")
    prepared = PreparedRepo(repo)
    assert prepared.prepare(adaptor, NODE, print) == PREPARED
    stamp_path = prepared.folder(adaptor) / STAMP
    stamp = json.loads(stamp_path.read_text())
    assert stamp["esbuild"] == esbuild_version()
    stamp["esbuild"] = "0.0.1"  # made by an older esbuild
    stamp_path.write_text(json.dumps(stamp))
    assert prepared.state(adaptor) is None and prepared.form(adaptor) == adaptor
    assert prepared.prepare(adaptor, NODE, print) == PREPARED
    assert prepared.stamp(adaptor)["esbuild"] == esbuild_version()
    # a reinstall (a new package.json) makes the old bundle stale too
    package = Path(adaptor.path) / "package.json"
    package.write_text(package.read_text() + "\n")
    assert prepared.state(adaptor) is None
    assert prepared.prepare(adaptor, NODE, print) == PREPARED
    assert not list(prepared.folder(adaptor).parent.glob(".tmp-*"))


def test_poolctl_install_prepares_what_it_installs_unless_told_not_to(tmp_path):
    repo_dir = linked_repo(tmp_path / "repo")
    poolctl = [sys.executable, str(Path(__file__).resolve().parents[2] / "bin" / "poolctl"),
               "install",
               "--offline", "--repo-dir", str(repo_dir), "--node", NODE]
    off = subprocess.run([*poolctl, "--no-prepare-adaptors", COMMON], capture_output=True,
                         text=True, timeout=120)
    assert off.returncode == 0, off.stderr
    assert "prepared" not in off.stdout and not (repo_dir / ".prepared").exists()
    on = subprocess.run([*poolctl, COMMON], capture_output=True, text=True, timeout=120)
    assert on.returncode == 0, on.stderr
    assert f"prepared {COMMON}" in on.stdout
    repo = AdaptorRepo(str(repo_dir), offline=True)
    assert PreparedRepo(repo).state(repo.resolve(COMMON)) == PREPARED
