"""flix: Featurized Low-Rank Mixtures (FLix) for JAX/Flax."""
import setuptools

# Versions pinned together: they install and run side by side on Python 3.11 (CPU).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "seqio==0.0.20",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "sentencepiece==0.2.3",  # SentencePiece VOCABULARY: seqio loads the model; a test trains one.
    "tensorflow-datasets==4.9.10",
    "importlib_resources==7.1.0",  # tensorflow-datasets imports it but does not require it.
    "gin-config==0.5.0",
    "clu==0.0.12",
    "tensorboard==2.21.0",
    "numpy==2.4.6",
    "num2words==0.5.14",
    "babel==2.18.0",
    "sacrebleu==2.6.0",
    "matplotlib==3.11.2",
]

EXTRAS_REQUIRE = {
    "test": ["pytest==9.2.0", "pytest-xdist==3.8.0"],
    # torch==2.13.0 is the CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
    "hf": ["torch==2.13.0", "transformers==5.24.0", "peft==0.21.2", "safetensors==0.8.0"],
}

setuptools.setup(
    name="flix",
    version="0.1.0",
    description="Featurized Low-Rank Mixtures: per-feature low-rank adapters for multitask multilingual fine-tuning",
    packages=setuptools.find_packages(include=["flix", "flix.*"]),
    # The gin files (models/, runs/, data/, experiments/): the CLI finds them in an install.
    package_data={"flix": ["configs/*/*.gin"], "flix.data": ["languages.json"]},
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
