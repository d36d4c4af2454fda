"""The stages, one file each; `STAGES` (edgekd/stage.py) imports them on first use."""
