"""The queue engine: ``Queue``, ``JoinableQueue``, ``SimpleQueue`` (``queue``)
on a shared-memory ring (``ring``), how its processes wait (``waiters``) and
the OS pieces under both (``primitives``)."""
