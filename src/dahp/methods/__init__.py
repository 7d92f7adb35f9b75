"""Hashing methods: DAHP, its ablations and the baselines, one module each, in one registry.

Import order is the order of ``--methods all`` and of the report tables.
"""

# isort: off
from . import dahp, dpsh, hashnet, dsh, csq, dbdh, dagh, dlbhc, dhn, shallow, sdh  # noqa: F401  (each registers its methods)
# isort: on
from .registry import LossSettings, Method, ShallowEncoder, get_method, list_methods, parse_methods, register_method

__all__ = ["LossSettings", "Method", "ShallowEncoder", "get_method", "list_methods", "parse_methods", "register_method"]
