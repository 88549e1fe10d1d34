"""Transport: bytes across a process boundary, shared by every engine.

``serialization`` (pickle, cloudpickle, zero-copy buffers), ``remote_errors``
(exceptions that cross), ``shm`` and ``shm_cache`` (shared-memory segments
and their recycling), ``tracker`` (the session's segment tracker, client
side) and ``tracker_daemon`` (the tracker process), ``connection``
(``multiprocessing.connection`` with zero-copy ``send``).  Imports only the
leaf modules (``polyproc._exceptions``, ``polyproc._platform``).
"""
