"""Packaging for kubectl proxyctl."""
from setuptools import find_packages, setup

setup(
    name="kubectl-proxyctl",
    version="0.1.0",
    description="A kube-proxy you can read: a minimal Service proxy engine plus tools to "
    "see, explain, verify and probe Service routing on Kubernetes nodes.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["kubectl_proxyctl", "kubectl_proxyctl.*"]),
    package_data={"kubectl_proxyctl": ["py.typed"]},
    install_requires=[
        "click>=8.1,!=8.4.0,!=8.4.1,<9",
        "kubernetes>=37,<38",
        "pyroute2>=0.9.7,<0.10",
        "tabulate>=0.9,<1",
        "paramiko>=5.1,<6",
        "PyYAML>=6,<7",
        "yaml-rs>=0.1.6,<0.2",
        "cryptography>=42",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "hypothesis>=6,<7",
            "import-linter>=2.1,<3",
        ],
    },
    entry_points={
        "console_scripts": [
            "kubectl-proxyctl=kubectl_proxyctl.cli.main:main",
            "kubectl_complete-proxyctl=kubectl_proxyctl.cli.completion:main",
        ],
    },
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Networking",
    ],
)
