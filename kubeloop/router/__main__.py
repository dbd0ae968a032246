"""``python -m kubeloop.router``: run the local traffic router."""

from kubeloop.router.server import main

main()
