"""Models built by an importable factory ``package.module:function``, weights from a state-dict file."""
from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agg2exp_lightning.errors import DataError

log = logging.getLogger(__name__)


def is_factory_spec(source: Any) -> bool:
    """Whether ``source`` reads as ``package.module:function`` (and is not an existing file)."""
    if not isinstance(source, str) or source.count(":") != 1 or Path(source).exists():
        return False
    module, _, func = source.partition(":")
    return bool(module) and bool(func) and all(part.isidentifier() for part in module.split(".") + func.split("."))


def import_factory(spec: str) -> Callable[..., Any]:
    """The callable named by ``package.module:function`` (``function`` may be dotted: ``Class.build``).

    Raises:
        DataError: malformed spec, the module cannot be imported, or it has no such callable.
    """
    if not is_factory_spec(spec):
        raise DataError(f"model factory {spec!r}: expected 'package.module:function' (an importable callable that returns a torch.nn.Module)")
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - ImportError, or an error inside the module: name both
        raise DataError(f"model factory {spec!r}: module {module_name!r} cannot be imported ({type(err).__name__}: "
                        f"{str(err)[:200]}); expected an importable 'package.module:function' on the Python path") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise DataError(f"model factory {spec!r}: module {module_name!r} has no attribute {attr!r}; expected a function returning a torch.nn.Module")
        obj = getattr(obj, part)
    if not callable(obj):
        raise DataError(f"model factory {spec!r}: {attr!r} is a {type(obj).__name__}, expected a callable returning a torch.nn.Module")
    return obj


def build_factory_model(spec: str, weights: str | Path | None, *, kwargs: Mapping[str, Any] | None = None,
                        map_location: Any = "cpu") -> Any:
    """Call the factory and load its weights (``weights_only=True``, strict, mismatches named).

    Args:
        spec: ``package.module:function``.
        weights: a state-dict file (or a checkpoint holding one under ``state_dict`` / ``model``);
            ``None`` keeps the factory's own weights (e.g. a factory that loads them itself).
        kwargs: keyword arguments of the factory.
        map_location: where the weights are loaded to.

    Returns:
        The module.

    Raises:
        DataError: the factory cannot be imported, fails, returns no ``nn.Module``, or the weights do not
            fit its model (naming the keys and shapes).
    """
    import torch

    from agg2exp_lightning.model_loading.checkpoints import load_state_dict_checked, read_weights_file, unwrap_state_dict

    factory = import_factory(spec)
    try:
        model = factory(**dict(kwargs or {}))
    except Exception as err:  # noqa: BLE001 - the user's code: say where it failed
        raise DataError(f"model factory {spec!r} failed: {type(err).__name__}: {str(err)[:300]}") from err
    if not isinstance(model, torch.nn.Module):
        raise DataError(f"model factory {spec!r} returned {type(model).__name__}, expected a torch.nn.Module")
    if weights is None:
        log.warning("model factory %s: no weights file given; using the weights the factory built", spec)
        return model
    state = unwrap_state_dict(read_weights_file(weights, what="weights file", map_location=map_location), what=f"weights file {weights}")
    load_state_dict_checked(model, state, what=f"weights file {weights}", expected=f"the model of factory {spec}")
    return model
