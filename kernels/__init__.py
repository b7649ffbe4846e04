"""Triton kernels, installed as ``esmgear_fast.kernels`` (one op per file, launchers and autograd
next to the kernels). Importing this package never imports triton; each kernel module does."""
