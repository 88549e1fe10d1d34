"""The managers engine: a server process that keeps shared objects, its
clients, proxies and wire protocol (see ``polyproc.managers``)."""
