"""The local process backend: worker processes and the thread that runs them.

``backend_class`` is what ``polyproc._pool.api.backend.load("process")`` returns.
"""
from .scheduler import ProcessScheduler as backend_class

__all__ = ["backend_class"]
