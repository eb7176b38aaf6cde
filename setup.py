"""
Builds the optional C fan-out loop (ocm/relay/_fanout.c, the module _ocm_fanout);
everything else is declared in setup.cfg.  Without a compiler the install
goes on without it and the relay runs the same loop in Python.  Not on PyPy,
whose JIT runs the Python loop (its figures in the README were measured so).

Where libcrypto's headers are found (Debian: libssl-dev) the module also
seals secure mode's datagrams (seal_fan_out, linked with -lcrypto); without
them it is built without, and secure mode seals in Python.
"""

import copy
import platform

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, LinkError


class BuildExt(build_ext):
    """The fan-out with secure mode's seal loop where libcrypto can be linked, else without it."""

    def build_extension(self, ext: Extension) -> None:
        if ext.name == "_ocm_fanout":
            sealed = copy.copy(ext)
            sealed.define_macros = [*ext.define_macros, ("OCM_SEAL", "1")]
            sealed.libraries = [*ext.libraries, "crypto"]
            try:
                super().build_extension(sealed)
                return
            except (CCompilerError, CompileError, LinkError) as e:  # no openssl/evp.h or no libcrypto
                print(f"_ocm_fanout: building without secure mode's seal loop ({e})")
        super().build_extension(ext)


cpython = platform.python_implementation() == "CPython"
setup(
    ext_modules=[Extension("_ocm_fanout", sources=["ocm/relay/_fanout.c"], optional=True)] if cpython else [],
    cmdclass={"build_ext": BuildExt},
)
