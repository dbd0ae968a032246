"""The ``kubeloop`` command-line program."""
