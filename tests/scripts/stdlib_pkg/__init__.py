"""A package run with ``python -m stdlib_pkg``: its ``__main__`` imports a
sibling module relatively, and maps it on a Pool and on a spawn context's Pool."""
