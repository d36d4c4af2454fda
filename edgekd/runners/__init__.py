"""Runtimes behind one Runner protocol; each backend is imported only when used."""
