"""
Builds the optional C fan-out loop (ocm/_fanout.c, the module _ocm_fanout);
everything else is declared in setup.cfg.  Without a compiler the install
goes on without it and the relay runs the same loop in Python.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("_ocm_fanout", sources=["ocm/_fanout.c"], optional=True)])
