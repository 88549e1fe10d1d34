"""The process engine: ``Process`` with polyproc's guarantees (``process``)
and what runs around ``run()`` in the child (``child``)."""
