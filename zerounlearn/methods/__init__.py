"""Unlearning methods. Importing this package registers every built-in method, one for
each name of zerounlearn.config.HPARAMS_CLASSES ("zerounlearn", "zerounlearn-paper",
"zerounlearn-gd", "gradient-ascent", "npo"), and checks that none is missing."""

from zerounlearn.methods import baselines as baselines  # registers gradient-ascent, npo
from zerounlearn.methods import zerounlearn as zerounlearn  # zerounlearn(-paper)
from zerounlearn.methods import zerounlearn_gd as zerounlearn_gd  # zerounlearn-gd
from zerounlearn.methods.registry import (
    UnlearningMethod,
    UnregisteredMethod,
    check_complete,
    get_method,
    list_methods,
    register_method,
    unregister_method,
)

check_complete()  # a name of HPARAMS_CLASSES without a class fails here, at import

__all__ = ["UnlearningMethod", "UnregisteredMethod", "check_complete", "get_method",
           "list_methods", "register_method", "unregister_method"]
