"""Reaching the Dask cluster of a ``Pool(cluster=...)``: import, connect, check.

``cluster`` is a scheduler address (``"tcp://host:8786"``), a
``distributed.Client`` (the user's: never closed here) or ``"local"`` (a
``LocalCluster`` of worker processes on this machine, owned by the pool and
closed with it).  Each failure ends in a clear error within a bound:

* Dask not installed: ``ClusterDependencyError`` (an ``ImportError``) at
  import, naming ``pip install polyproc[dask]``;
* a scheduler that does not answer: ``ClusterError`` naming its address
  after ``CONNECT_SECONDS``;
* workers that cannot import polyproc, or run another version of Python,
  polyproc or cloudpickle than the client: ``ClusterError`` naming them
  (Dask's own check of its packages only logs a warning);
* task arguments travel in band (pickled into the Dask task); manager
  proxies among them carry their authkey only over a trusted link
  (``trusted_link``: TLS, or loopback only);
* ``maxtasksperchild`` on workers without a nanny (nobody would replace a
  retired worker): ``ValueError`` at ``Pool()``.
"""
from __future__ import annotations

from typing import Any

from ...._exceptions import ClusterDependencyError, ClusterError

try:
    import distributed
except ImportError as _error:
    raise ClusterDependencyError(
        "Pool(cluster=...) and Executor(cluster=...) run on Dask distributed, "
        f"which cannot be imported here ({_error}). Install it with: "
        "pip install polyproc[dask]") from _error

from . import remote

CONNECT_SECONDS = 10.0   # a scheduler that does not answer: ClusterError after this


class ClusterLink:
    """The client of one pool's cluster, and what the pool owns of it."""

    def __init__(self, client: Any, address: str, cluster: Any = None,
                 owns_client: bool = True):
        self.client = client
        self.address = address
        self.cluster = cluster          # a LocalCluster the pool started, or None
        self.owns_client = owns_client  # False: the user's Client, never closed here

    def close(self) -> None:
        """Close what the pool owns: its client, its local cluster."""
        if self.owns_client:
            try:
                self.client.close(timeout=CONNECT_SECONDS)
            except Exception:
                pass  # the scheduler is gone already
        if self.cluster is not None:
            try:
                self.cluster.close(timeout=CONNECT_SECONDS)
            except Exception:
                pass


def connect(cluster: Any, workers: int) -> ClusterLink:
    """The ``ClusterLink`` for *cluster* (see the module docstring).

    *workers*: for ``"local"``, how many worker processes to start (0: one
    per CPU).  Raises ``ClusterError`` if the scheduler cannot be reached,
    ``TypeError`` for a *cluster* of another kind.
    """
    if isinstance(cluster, distributed.Client):
        return ClusterLink(cluster, str(cluster.scheduler_info().get("address", cluster)),
                           owns_client=False)
    if cluster == "local":
        return _local_cluster(workers)
    if not isinstance(cluster, str):
        raise TypeError(f"cluster must be a scheduler address ('tcp://host:8786'), a "
                        f"distributed.Client or 'local', not {cluster!r}")
    try:
        client = distributed.Client(cluster, timeout=CONNECT_SECONDS,
                                    set_as_default=False)
    except (OSError, TimeoutError) as error:
        raise ClusterError(
            f"cannot reach the Dask scheduler at {cluster} within {CONNECT_SECONDS:g} s "
            f"({error}). Start it with `dask scheduler` and check the address, "
            f"or pass cluster='local' for workers on this machine.", cluster) from error
    return ClusterLink(client, cluster)


def _local_cluster(workers: int) -> ClusterLink:
    from ...._cpu import process_cpu_count
    n = workers or process_cpu_count() or 1
    cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1,
                                       processes=True, dashboard_address=":0")
    try:
        client = distributed.Client(cluster, set_as_default=False)
    except BaseException:
        cluster.close()
        raise
    return ClusterLink(client, str(cluster.scheduler_address), cluster)


def trusted_link(link: ClusterLink) -> bool:
    """Whether task payloads travel only over TLS or loopback.

    True for a ``tls://`` (or in-process) scheduler, and for a scheduler
    and workers that all listen on loopback addresses (one machine).  Then
    manager proxies among the arguments may carry their authkey.
    """
    if link.address.startswith(("tls://", "inproc://")):
        return True
    workers = link.client.scheduler_info(n_workers=-1)["workers"]
    return all(_is_loopback(a) for a in [link.address, *workers])


def _is_loopback(address: str) -> bool:
    import ipaddress
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def total_threads(link: ClusterLink) -> int:
    """The threads of every worker connected now (at least 1)."""
    workers = link.client.scheduler_info(n_workers=-1)["workers"]
    return max(1, sum(w.get("nthreads", 1) for w in workers.values()))


def check_workers(link: ClusterLink, needs_nanny: bool) -> None:
    """Refuse workers that cannot run polyproc's chunks (module docstring).

    Raises ``ClusterError`` for workers that cannot import polyproc or
    report other versions; ``ValueError`` if *needs_nanny* and a worker
    has none.
    """
    mine = remote.versions()
    try:
        theirs = link.client.run(remote.versions, on_error="return")
    except Exception as error:
        raise ClusterError(f"cannot ask the workers of the Dask scheduler at "
                           f"{link.address} for their versions: {error!r}",
                           link.address) from error
    for address, reported in theirs.items():
        if isinstance(reported, BaseException):
            raise ClusterError(
                f"the Dask worker {address} cannot run polyproc's tasks: {reported!r}. "
                f"Install polyproc (version {mine['polyproc']}) on every worker.",
                link.address) from reported
        differ = {k: (mine[k], reported.get(k)) for k in mine if reported.get(k) != mine[k]}
        if differ:
            what = ", ".join(f"{k} {ours} here, {its} there"
                             for k, (ours, its) in differ.items())
            raise ClusterError(
                f"the Dask worker {address} runs other versions than this client: "
                f"{what}. Tasks pickled here would not load there; install the "
                f"same versions on the workers.", link.address)
    if needs_nanny:
        workers = link.client.scheduler_info(n_workers=-1)["workers"]
        alone = [a for a, w in workers.items() if not w.get("nanny")]
        if alone:
            raise ValueError(
                f"maxtasksperchild needs Dask workers with a nanny, which starts a new "
                f"worker process when one retires; {', '.join(alone)} has none "
                f"(started with --no-nanny?). Start the workers with a nanny, or "
                f"drop maxtasksperchild.")

