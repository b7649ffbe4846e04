"""Test-session setup shared by every test directory.

Without a GPU the Triton kernels can only run under Triton's interpreter, which reads
``TRITON_INTERPRET`` when kernels are defined, so it is set here, before any test module imports
``esmgear_fast.kernels``. With a GPU the kernels compile for it and the variable is left alone.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
