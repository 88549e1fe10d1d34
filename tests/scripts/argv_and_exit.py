"""Prints what a program sees of how it was started, then ends as asked.

``argv_and_exit.py exit N`` exits with N; ``argv_and_exit.py raise``
raises ValueError; anything else ends normally.
"""
import json
import sys

print(json.dumps({"argv": sys.argv, "name": __name__, "file": __file__,
                  "path0": sys.path[0],
                  "main_is_me": sys.modules["__main__"].__dict__ is globals()}),
      flush=True)
if sys.argv[1:2] == ["exit"]:
    sys.exit(int(sys.argv[2]))
if sys.argv[1:2] == ["raise"]:
    raise ValueError("raised by the program")
