"""The evaluate stage: metrics, calibration, slices, report and reference sample."""
