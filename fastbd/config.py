"""Typed configs for the training side: the loader itself lives in `beton_builders/config.py`.

The compiler needs the same strict loader but may import nothing of `fastbd/` (the first wall, tests/
test_architecture.py), so the one implementation sits there and this module re-exports it.
"""

from beton_builders.config import ConfigError, UserError, describe, from_dict, load_config, to_dict, to_yaml

__all__ = ["ConfigError", "UserError", "describe", "from_dict", "load_config", "to_dict", "to_yaml"]
