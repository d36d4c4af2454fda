"""One file per registered scheme; `SCHEMES` (edgekd/distill/scheme.py) imports them on use."""
