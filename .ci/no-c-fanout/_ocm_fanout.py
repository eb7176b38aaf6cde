# Put this directory first on PYTHONPATH to run ocm as if its optional C
# fan-out (ocm/relay/_fanout.c) had not been built: the relay uses the Python loop.
raise ImportError("the C fan-out is disabled for this run")
