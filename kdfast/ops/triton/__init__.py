"""Triton kernels (GPU; testable on the CPU with TRITON_INTERPRET=1), registered as CUDA implementations of kdfast ops."""
