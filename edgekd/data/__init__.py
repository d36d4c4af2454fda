"""Data sets held in memory as uint8 tensors, their splits, batches and calibration sets."""
