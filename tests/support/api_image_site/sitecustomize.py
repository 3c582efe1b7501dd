"""Interpreter start-up hook of tests that run a process as in the API image.

With this directory first on PYTHONPATH (and the repository after it), every process
refuses the modules the API image does not install (tests/support/base_deps_only.py).
"""

from tests.support.base_deps_only import install

install()
