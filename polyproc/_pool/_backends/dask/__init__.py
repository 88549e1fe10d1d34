"""The Dask cluster backend: ``load("dask")``, chosen by ``Pool(cluster=...)``.

connect.py reaches the cluster (and raises ``ClusterDependencyError`` when
Dask is not installed), backend.py is ``DaskBackend`` and its
ClusterScheduler thread on the client, remote.py what runs in the Dask
workers.  See docs/cluster.md.
"""
from .backend import DaskBackend

backend_class = DaskBackend
