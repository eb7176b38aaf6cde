"""
Builds the optional C fan-out loop (ocm/relay/_fanout.c, the module _ocm_fanout);
everything else is declared in setup.cfg.  Without a compiler the install
goes on without it and the relay runs the same loop in Python.  Not on PyPy,
whose JIT runs the Python loop (its figures in the README were measured so).
"""

import platform

from setuptools import Extension, setup

cpython = platform.python_implementation() == "CPython"
setup(ext_modules=[Extension("_ocm_fanout", sources=["ocm/relay/_fanout.c"], optional=True)] if cpython else [])
