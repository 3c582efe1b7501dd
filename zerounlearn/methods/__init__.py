"""Unlearning methods. Importing this package registers every built-in method:
"zerounlearn", "zerounlearn-paper", "zerounlearn-gd", "gradient-ascent", "npo"."""

from zerounlearn.methods import baselines as baselines  # registers gradient-ascent, npo
from zerounlearn.methods import zerounlearn as zerounlearn  # zerounlearn(-paper)
from zerounlearn.methods import zerounlearn_gd as zerounlearn_gd  # zerounlearn-gd
from zerounlearn.methods.registry import (
    UnlearningMethod,
    get_method,
    list_methods,
    register_method,
    unregister_method,
)

__all__ = ["UnlearningMethod", "get_method", "list_methods", "register_method",
           "unregister_method"]
