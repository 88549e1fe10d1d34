"""The pool engine: ``Pool`` (``api``) and ``Executor`` (``executor``) on a
backend that runs chunks of tasks (``_backends``: local processes, threads)."""
