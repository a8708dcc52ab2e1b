"""monetpipe: a self-configuring 2D segmentation pipeline around MoNet (Knolle et al., PLOS ONE 2021)."""

from setuptools import find_packages, setup

CLI = "monetpipe.{}.cli:main"

setup(
    name="monetpipe",
    version="0.1.0",
    description="nnU-Net-style self-configuring pipeline for MoNet and U-Net baselines on MSD tasks",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["monetpipe", "monetpipe.*"]),
    # torch is installed first and pinned by the Makefile (a CPU wheel here); any recent torch works.
    install_requires=[
        "torch>=2.1",
        "batchgenerators>=0.25",
        "SimpleITK>=2.2",
        "numpy>=1.24",
        "scipy>=1.10",
        "pandas>=2.0",
        "tqdm>=4.60",
        "matplotlib>=3.6",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "monai>=1.3",
            "medpy>=0.4",
            "onnx>=1.15",
            "onnxruntime>=1.17",
            "onnxscript>=0.1",
            # the linter CI runs; pinned to a minor version so its formatting does not drift under us
            "ruff>=0.17,<0.18",
        ],
        "onnx": ["onnx>=1.15", "onnxruntime>=1.17", "onnxscript>=0.1"],
        # --precision int8 runs in ONNX Runtime (the onnx extra); torchao is only for the PT2E comparison of
        # monet_benchmark --backend torch_compile --precision int8. Pinned: its quantizer API moves between
        # releases; 0.18.0 installs without pulling another torch (checked with torch 2.13).
        "int8": ["onnx>=1.15", "onnxruntime>=1.17", "onnxscript>=0.1", "torchao==0.18.0"],
        "federated": ["flwr>=1.42,<2"],  # the Message API, strategies and deployment runtime used
    },
    entry_points={
        "console_scripts": [
            "monet_synthetic_task=monetpipe.synthetic_cli:main",
            "monet_plan_and_preprocess=" + CLI.format("preprocessing"),
            "monet_train=" + CLI.format("training"),
            "monet_predict=" + CLI.format("inference"),
            "monet_evaluate=" + CLI.format("evaluation"),
            "monet_benchmark=" + CLI.format("benchmark"),
            "monet_inspect=monetpipe.evaluation.inspect_cli:main",
            "monet_federated=" + CLI.format("federated"),
        ]
    },
)
