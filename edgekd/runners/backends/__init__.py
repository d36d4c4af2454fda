"""One file per registered runner; `RUNNERS` (edgekd/runners/base.py) imports them on use."""
