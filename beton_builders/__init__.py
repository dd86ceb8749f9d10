"""Compilers from image sources to poisoned FFCV .beton files, DALI tar shards and a manifest."""

from .build import BuildError, build
from .manifest import ManifestError, load_manifest, train_indices, verify_files
from .spec import PoisonSpec, load_spec

__all__ = ["BuildError", "ManifestError", "PoisonSpec", "build", "load_manifest", "load_spec", "train_indices",
           "verify_files"]
