"""The local process backend: worker processes and the thread that runs them."""
