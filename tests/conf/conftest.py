"""The real-pool fixtures of tests/supervisor, for the checks of conf/ against a live pool."""

from tests.supervisor.conftest import lightning, start_pool

__all__ = ["lightning", "start_pool"]
