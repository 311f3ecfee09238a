"""flix: Featurized Low-Rank Mixtures (FLix) for JAX/Flax."""
import setuptools

# Compatible ranges for a library: from the versions tested together on Python 3.11 (CPU) up to
# the next release that may break the API (the next minor for 0.x packages; TensorFlow,
# tensorflow-text and tensorboard release in lockstep). constraints.txt pins the exact versions
# tested; `make` installs with `-c constraints.txt`.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "jaxlib>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "seqio>=0.0.20,<0.1",
    "tensorflow>=2.21.0,<2.22",
    "tensorflow-text>=2.21.1,<2.22",
    "sentencepiece>=0.2.3,<0.3",  # SentencePiece VOCABULARY: seqio loads it; a test trains one.
    "tensorflow-datasets>=4.9.10,<5",
    "importlib_resources>=7.1.0,<8",  # tensorflow-datasets imports it but does not require it.
    "gin-config>=0.5.0,<0.6",
    "clu>=0.0.12,<0.1",
    "tensorboard>=2.21.0,<2.22",
    "numpy>=2.4.6,<3",
    "num2words>=0.5.14,<0.6",
    "babel>=2.18.0,<3",
    "sacrebleu>=2.6.0,<3",
    "matplotlib>=3.11.2,<4",
]

EXTRAS_REQUIRE = {
    # libtpu: `flix.compile` compiles for TPU topologies without a TPU (tests/test_compile.py);
    # its releases pair with jax's (0.0.42.x with jax 0.10.x). A host without TPUs keeps JAX
    # on the CPU (flix.platforms).
    "test": ["pytest>=9.2.0,<10", "pytest-xdist>=3.8.0,<4", "import-linter>=2.17,<3",
             "libtpu>=0.0.42.1,<0.0.43"],
    # torch: an unpinned torch pulls PyPI's multi-GB CUDA build. constraints.txt pins the tested
    # version, whose CPU wheel (2.13.0+cpu) comes from https://download.pytorch.org/whl/cpu or a
    # local wheel (pip --find-links); the range alone does not choose the CPU build.
    "hf": ["torch>=2.13.0,<3", "transformers>=5.24.0,<6", "peft>=0.21.2,<0.22",
           "safetensors>=0.8.0,<0.9"],
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
