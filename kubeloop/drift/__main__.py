"""``python -m kubeloop.drift``: runs the drift service (the drift image's entrypoint)."""

from kubeloop.drift.service import main

if __name__ == "__main__":
    main()
