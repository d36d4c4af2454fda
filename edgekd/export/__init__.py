"""Exporters, one function per format, and parity checks against PyTorch."""
