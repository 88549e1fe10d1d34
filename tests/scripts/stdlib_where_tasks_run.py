"""An unmodified stdlib program: a multiprocessing.Pool().map whose tasks say where they ran.

Each line: ``<task> <host> <pid>`` of the process that ran the task.
"""
import multiprocessing
import os
import socket


def where(x):
    return f"{x} {socket.gethostname()} {os.getpid()}"


if __name__ == "__main__":
    with multiprocessing.Pool() as pool:
        for line in pool.map(where, range(8), chunksize=1):
            print(line)
