"""UniVTR: CLIP-based text-video retrieval methods in one framework."""
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
requirements = [
    line.strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#") and not line.startswith("pytest")
]

setup(
    name="univtr",
    version="0.1.0",
    description="Train and evaluate CLIP-based text-video retrieval methods on the standard benchmarks.",
    long_description=(here / "README.md").read_text() if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["modules*", "dataloaders*", "preprocess*", "engine*", "tools*"]),
    py_modules=["main_task_retrieval", "main_pretrain"],
    package_data={"modules.clip": ["bpe_simple_vocab_16e6.txt.gz", "LICENSE.bpe_vocab", "model_configs/*.json"],
                  "modules.videomae": ["model_configs/*.json"]},
    include_package_data=True,
    install_requires=requirements,
)
