"""The executor's use of prepared adaptors (``pool.prepare``): which path a shim loads, which
environment a shim boots with, and asking the background :class:`~pool.prepare.Preparer`.

``strict`` and ``context`` use it (``--prepare-adaptors``, on by default); ``cold`` never does,
so ``cold`` stays the plain baseline the others are measured against.

Per adaptor of a run or a warm-up: a current prepared form is used; an adaptor never tried is
used plain and handed to the preparer; one that stayed plain stays plain. Per shim boot: the
compile cache is passed (``NODE_COMPILE_CACHE``) only when the shim's Node is ≥ 22 and a cache
built for exactly its binary, flags and uid covers every prepared adaptor; otherwise a rebuild is
queued and this shim boots without it (a partial cache would be written to by the shim).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pool.adaptors import Adaptor, AdaptorRepo
from pool.executor.shim import SHIM_SCRIPT, node_flags
from pool.prepare import (
    COMPILE_CACHE_MIN_NODE,
    PREPARED,
    CompileCache,
    PreparedRepo,
    PreparedShim,
    Preparer,
)


class PreparedForms:
    """One executor's view of the repo's prepared adaptors and compile caches."""

    def __init__(self, repo: AdaptorRepo, node: str, memory_mb: int,
                 build_shim: Callable[[int, dict[str, str], list[Adaptor], str], None],
                 check_shim: Callable[[str], None], uid: int) -> None:
        """``build_shim(memory_mb, extra_env, adaptors, script)`` boots a shim as the factory
        does, with ``extra_env`` added, warms ``adaptors`` and lets it exit (it writes the
        cache); ``check_shim(script)`` boots one from a bundled shim and runs a job on it;
        ``uid`` is the one the shims' Node sees (the sandbox's inner uid, or ours)."""
        self.uid = uid
        self.repo = repo
        self.node = node
        self.memory_mb = memory_mb
        self.prepared = PreparedRepo(repo)
        self.shim = PreparedShim(repo)
        self._caches: dict[tuple[int, str], CompileCache] = {}
        self._build_shim = build_shim
        self.node_major = 0  # learnt from the first shim's ``ready``
        self._attempted: set[tuple[str, ...]] = set()  # a failed build is not retried per boot
        self.preparer = Preparer(self.prepared, node, self._build_cache, self.shim, check_shim)
        self.preparer.want_shim()

    def script(self) -> str:
        """The shim script to boot: the pool's bundle of shim.mjs once it is made and checked."""
        return self.shim.script() or SHIM_SCRIPT

    def form(self, adaptor: Adaptor) -> Adaptor:
        """The adaptor as shims load it now; never tried → plain, and queued for preparing."""
        state = self.prepared.state(adaptor)
        if state == PREPARED:
            return self.prepared.form(adaptor)
        if state is None:
            self.preparer.want(adaptor)
        return adaptor

    def learn(self, info: dict[str, Any]) -> None:
        """Note the Node version a shim reported, and queue a cache build it can use."""
        try:
            major = int(str(info.get("node") or "0").split(".")[0])
        except ValueError:
            major = 0
        if major and not self.node_major:
            self.node_major = major
            if self._cache_works():
                self.preparer.want_cache()

    def cache(self, memory_mb: int, script: str) -> CompileCache:
        if (memory_mb, script) not in self._caches:
            self._caches[memory_mb, script] = CompileCache(self.repo, self.node,
                                                           node_flags(memory_mb), script,
                                                           self.uid)
        return self._caches[memory_mb, script]

    def shim_env(self, memory_mb: int, script: str) -> dict[str, str]:
        """What a shim of ``memory_mb`` running ``script`` adds to its environment: the compile
        cache, if it will be hit."""
        if not self._cache_works() or memory_mb != self.memory_mb:
            return {}
        cache = self.cache(memory_mb, script)
        if cache.covers(self.prepared.prepared()):
            return cache.env()
        self.preparer.want_cache()
        return {}

    def _cache_works(self) -> bool:
        return self.node_major >= COMPILE_CACHE_MIN_NODE

    def _build_cache(self, adaptors: list[Adaptor]) -> None:
        """The preparer's second job: a compile cache for the executor's usual shim."""
        if not self._cache_works() or not adaptors:
            return
        script = self.script()
        cache = self.cache(self.memory_mb, script)
        attempt = (script, *(a.path for a in adaptors))
        if cache.covers(adaptors) or attempt in self._attempted:
            return
        self._attempted.add(attempt)
        cache.build(lambda extra: self._build_shim(self.memory_mb, extra, adaptors, script),
                    adaptors)
