"""Kernels for the engine's hot paths: Triton kernels on CUDA, each beside its torch reference.

The engine picks an implementation by explicit configuration (`attention_backend`), never by
an environment flag read here.
"""
