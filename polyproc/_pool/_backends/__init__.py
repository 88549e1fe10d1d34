"""The engines that run a pool's chunks of tasks, one subpackage or module each."""
