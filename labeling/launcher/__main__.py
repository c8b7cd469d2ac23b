"""`python -m labeling.launcher bootstrap`: create the server venv (once, a few minutes)."""

import sys

from labeling.launcher.bootstrap import bootstrap

if sys.argv[1:] != ["bootstrap"]:
    sys.exit("usage: python -m labeling.launcher bootstrap")
print(bootstrap())
