"""Strict, typed configuration: YAML loading with line marks and pydantic models."""
