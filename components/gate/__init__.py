"""The gate stage: objectives, then the champion on the same evaluation window."""
