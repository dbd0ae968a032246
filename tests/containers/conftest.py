"""Fixtures for the image tests: a Docker-compatible API (Docker, or podman's service) and
kubeloop's built images. No engine at all skips these tests, saying so; an engine without
the images fails them, since `make test` builds the images first (`make images`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kubeloop.images import IMAGES, image
from kubeloop.local.containers import (
    ContainerApi,
    NoContainerEngine,
    container_api,
    missing_images,
)


@pytest.fixture(scope="session")
def engine(tmp_path_factory) -> Iterator[ContainerApi]:
    home = tmp_path_factory.mktemp("engine")
    try:
        with container_api(home) as api:
            missing = missing_images(api, [image(name) for name in IMAGES])
            if missing:
                pytest.fail(f"images not built: {', '.join(missing)}; run `make images`")
            yield api
    except NoContainerEngine as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def docker_client(engine):
    client = engine.client()
    yield client
    client.close()
