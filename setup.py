"""Maps the top-level source folders into the ``kubeloop`` namespace.

``components/``, ``pipelines/`` and ``operators/`` sit at the repository's top level
(the layout is fixed) but install as ``kubeloop.components``, ``kubeloop.pipelines`` and
``kubeloop.operators`` so that no generic module name leaks into site-packages.
"""

from setuptools import find_packages, setup

MAPPED = {
    "kubeloop.components": "components",
    "kubeloop.pipelines": "pipelines",
    "kubeloop.operators": "operators",
}

packages = find_packages(include=["kubeloop", "kubeloop.*"])
package_dir = {"kubeloop": "kubeloop"}
for name, folder in MAPPED.items():
    package_dir[name] = folder
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(where=folder, exclude=["*tests*"])]

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"kubeloop.pipelines": ["compiled/*.yaml"], "kubeloop": ["py.typed"]},
)
