"""The validate stage: schema, quality, label and leakage checks on a dataset snapshot."""
