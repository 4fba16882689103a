"""Kernel tests: on CPU the Triton kernels run under `TRITON_INTERPRET=1`, which the root
`tests/conftest.py` sets before any kernel module is imported."""
