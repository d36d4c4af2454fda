"""One file per registered loss; `LOSSES` (edgekd/distill/loss.py) imports them on first use."""
