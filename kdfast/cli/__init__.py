"""The command lines (scripts/*.py are shims calling them; setup.py names them as console entry points).

Each module imports torch and the pipelines only after its arguments are parsed, so that --help and argument errors
come at once; this package and its modules must stay free of heavy imports at module level. (They live here rather
than in kdfast.distill / kdfast.evaluate / kdfast.data, whose package __init__ files import torch.)
"""
