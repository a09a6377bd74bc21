"""mae-hf: Masked Autoencoders (MAE) as first-class Hugging Face models, with Accelerate training scripts."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="mae-hf",
    version="0.1.0",
    description="Masked Autoencoders (He et al.) for transformers: reference numerics, Accelerate scripts, Hub",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # The card templates live at the top level (model_cards/) and install as mae_hf.model_cards.
    package_dir={"": "modeling", "mae_hf.model_cards": "model_cards"},
    packages=[*find_packages("modeling"), "mae_hf.model_cards"],
    include_package_data=True,
    package_data={"mae_hf": ["metrics/*/*.py"], "mae_hf.model_cards": ["*.md"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "transformers>=5,<6",
        "datasets>=3",
        "accelerate>=1.2",
        "evaluate>=0.4",
        "huggingface_hub>=1.0",
        "safetensors>=0.4",
        "timm>=1.0",
        "pillow>=10",
        "numpy",
        "pyyaml",
        "tqdm",
        "tensorboard",
    ],
    extras_require={
        "demo": ["scikit-learn"],
        "dev": ["pytest", "ruff", "scikit-learn"],
    },
)
