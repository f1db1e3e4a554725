"""Kernels the enclave shares across protocols (C passes built on first use, with PyTorch fallbacks)."""
