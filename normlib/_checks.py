"""Argument checks shared by every normlib module (internal).

One message format for every check::

    <name> must be <what it must be>, got <value>; <how to fix it>

``ValueError`` for a value of the right type outside its range (``eps=0``,
``momentum=1.5``, ``eps=inf``), ``TypeError`` for a value of the wrong type
(``num_features=2.5``, ``eps="1e-5"``). ``bool`` is not a number here, though
Python counts it as one: ``eps=True`` is a ``TypeError``. Numbers are accepted
as any ``int``/``float`` including NumPy scalars; a float where a finite one
is needed (every float check unless it says otherwise) refuses ``inf`` and
``NaN``. Each check returns the value converted (``int`` or ``float``) so a
caller can write ``self.eps = check_eps(eps)``.

Example:
    >>> check_eps(1e-5)
    1e-05
    >>> check_eps(float("inf"))
    Traceback (most recent call last):
    ...
    ValueError: eps must be a positive float, got inf; use a finite value, e.g. eps=1e-05
    >>> check_positive_int("num_features", True)
    Traceback (most recent call last):
    ...
    TypeError: num_features must be a positive int, got True (bool); pass an int, e.g. num_features=1
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

__all__ = [
    "argument_error",
    "check_bool",
    "check_callable",
    "check_choice",
    "check_device",
    "check_dtype",
    "check_eps",
    "check_float",
    "check_int",
    "check_mode",
    "check_module",
    "check_momentum",
    "check_nonnegative_float",
    "check_nonnegative_int",
    "check_per_channel",
    "check_positive_float",
    "check_positive_int",
    "check_probability",
    "check_shape",
    "check_str",
    "check_tensor",
    "is_int",
    "is_real",
]


def argument_error(exc: type[Exception], name: str, requirement: str, value, fix: str | None = None,
                   *, show=None, verb: str = "be") -> Exception:
    """The exception ``exc("<name> must be <requirement>, got <value>; <fix>")``.

    ``show`` replaces ``repr(value)`` in the message (for tensors and other long values);
    ``verb`` replaces "be" ("have" for shapes).
    """
    shown = show if show is not None else _show(value)
    message = f"{name} must {verb} {requirement}, got {shown}"
    if fix:
        message += f"; {fix}"
    return exc(message)


def _show(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    if isinstance(value, bool):
        return f"{text} (bool)"
    if not isinstance(value, (numbers.Real, str)) and value is not None:
        return f"{text} ({type(value).__name__})"
    return text


def is_int(value) -> bool:
    """An integer that is not a bool (``int`` or a NumPy integer)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A real number that is not a bool (``int``, ``float`` or a NumPy scalar)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------ integers


def check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None,
              allow_none: bool = False, meaning: str | None = None, fix: str | None = None) -> int | None:
    """``value`` as an ``int`` in ``[minimum, maximum]`` (either bound may be ``None``).

    ``allow_none`` admits ``None``; ``meaning`` says what ``None`` (or the value) means in the message.
    """
    if value is None and allow_none:
        return None
    if minimum is not None and maximum is not None:
        requirement = f"an int in [{minimum}, {maximum}]"
    elif minimum == 1:
        requirement = "a positive int"
    elif minimum == 0:
        requirement = "a non-negative int"
    elif minimum is not None:
        requirement = f"an int >= {minimum}"
    elif maximum is not None:
        requirement = f"an int <= {maximum}"
    else:
        requirement = "an int"
    if allow_none:
        requirement += " or None"
    if meaning:
        requirement += f" ({meaning})"
    example = minimum if minimum is not None else (maximum if maximum is not None else 0)
    if not is_int(value):
        raise argument_error(TypeError, name, requirement, value,
                             fix or f"pass an int, e.g. {name}={example}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise argument_error(ValueError, name, requirement, value, fix or f"use e.g. {name}={example}")
    return int(value)


def check_positive_int(name: str, value, *, minimum: int = 1, allow_none: bool = False,
                       meaning: str | None = None, fix: str | None = None) -> int | None:
    """``value`` as an ``int >= minimum`` (default 1), or ``None`` with ``allow_none``."""
    return check_int(name, value, minimum=minimum, allow_none=allow_none, meaning=meaning, fix=fix)


def check_nonnegative_int(name: str, value, *, fix: str | None = None) -> int:
    """``value`` as an ``int >= 0``."""
    return check_int(name, value, minimum=0, fix=fix)


# -------------------------------------------------------------------------------------- floats


def check_float(name: str, value, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False, finite: bool = True,
                example: float | None = None, fix: str | None = None) -> float:
    """``value`` as a ``float`` in the interval from ``low`` to ``high``.

    ``low_open``/``high_open`` exclude the bound; ``finite=False`` admits ``inf`` (never ``NaN``).
    """
    if low is not None and high is not None:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        requirement = f"a float in {left}{_num(low)}, {_num(high)}{right}"
    elif low == 0 and finite:
        requirement = "a positive float" if low_open else "a non-negative float"
    elif low is not None:
        requirement = f"a {'finite ' if finite else ''}float {'>' if low_open else '>='} {_num(low)}"
    elif high is not None:
        requirement = f"a {'finite ' if finite else ''}float {'<' if high_open else '<='} {_num(high)}"
    else:
        requirement = "a finite float" if finite else "a float"
    if example is None:
        example = 1.0 if (low is None or low < 1.0) and (high is None or high > 1.0) else (
            low if low is not None and not low_open else (high if high is not None else 0.0))
        if low is not None and high is not None and not (low < example < high or
                                                         (example == low and not low_open)):
            example = (low + high) / 2
    if not is_real(value):
        raise argument_error(TypeError, name, requirement, value,
                             fix or f"pass a number, e.g. {name}={_num(example)}")
    v = float(value)
    bad = (
        math.isnan(v)
        or (finite and math.isinf(v))
        or (low is not None and (v <= low if low_open else v < low))
        or (high is not None and (v >= high if high_open else v > high))
    )
    if bad:
        hint = "a finite value" if finite and math.isinf(v) else ("a number" if math.isnan(v) else "")
        raise argument_error(ValueError, name, requirement, value,
                             fix or f"use {hint + ', ' if hint else ''}e.g. {name}={_num(example)}")
    return v


def _num(x: float) -> str:
    return repr(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def check_positive_float(name: str, value, *, example: float = 1.0, fix: str | None = None) -> float:
    """``value`` as a finite ``float > 0``."""
    return check_float(name, value, low=0.0, low_open=True, example=example, fix=fix)


def check_nonnegative_float(name: str, value, *, example: float = 0.0, fix: str | None = None) -> float:
    """``value`` as a finite ``float >= 0``."""
    return check_float(name, value, low=0.0, example=example, fix=fix)


def check_eps(value, *, name: str = "eps", example: float = 1e-5, why: str | None = None) -> float:
    """A finite ``eps > 0``; ``why`` says what it protects (added to the message)."""
    requirement = "a positive float" + (f" ({why})" if why else "")
    if not is_real(value):
        raise argument_error(TypeError, name, requirement, value, f"pass a number, e.g. {name}={example!r}")
    if not (math.isfinite(value) and value > 0):
        hint = "a finite value, " if not math.isnan(value) and value > 0 else ""
        raise argument_error(ValueError, name, requirement, value, f"use {hint}e.g. {name}={example!r}")
    return float(value)


def check_momentum(value, *, name: str = "momentum", allow_none: bool = True,
                   high_open: bool = False) -> float | None:
    """A running-average momentum in ``[0, 1]`` (``[0, 1)`` with ``high_open``), or ``None`` if allowed.

    ``None`` means a cumulative moving average, as in torch's batch normalization.
    """
    if value is None and allow_none:
        return None
    requirement = f"a float in [0, 1{')' if high_open else ']'}" + (" or None" if allow_none else "")
    example = 0.9 if high_open else 0.1
    if not is_real(value):
        raise argument_error(TypeError, name, requirement, value, f"pass a number, e.g. {name}={example}")
    if not (0.0 <= value < 1.0 if high_open else 0.0 <= value <= 1.0):
        raise argument_error(ValueError, name, requirement, value, f"use e.g. {name}={example}")
    return float(value)


def check_probability(name: str, value, *, high_open: bool = False, low_open: bool = False) -> float:
    """A probability in ``[0, 1]`` (either end excluded on request)."""
    return check_float(name, value, low=0.0, high=1.0, low_open=low_open, high_open=high_open, example=0.5)


# ------------------------------------------------------------------------------ other kinds


MODES = ("train", "eval")


def check_mode(value, *, name: str = "mode") -> str:
    """The mode an analysis tool measures in: ``"train"`` (batch statistics) or ``"eval"`` (running ones)."""
    if value not in MODES:
        raise argument_error(ValueError, name, "'train' (batch statistics) or 'eval' (running statistics)",
                             value, f"use e.g. {name}='train'")
    return value


def check_bool(name: str, value) -> bool:
    """``True`` or ``False`` (not 0 or 1)."""
    if not isinstance(value, bool):
        raise argument_error(TypeError, name, "True or False", value, f"pass a bool, e.g. {name}=True")
    return value


def check_choice(name: str, value, choices: Sequence, *, fix: str | None = None):
    """One of ``choices``."""
    try:
        ok = value in choices
    except TypeError:  # unhashable value against a set or dict
        ok = False
    if not ok:
        options = ", ".join(repr(c) for c in choices)
        raise argument_error(ValueError, name, f"one of ({options})", value,
                             fix or f"use e.g. {name}={next(iter(choices))!r}")
    return value


def check_callable(name: str, value, *, what: str = "callable", allow_none: bool = False):
    """A callable (``what`` says how it is called), or ``None`` if allowed."""
    if value is None and allow_none:
        return None
    if not callable(value):
        raise argument_error(TypeError, name, what + (" or None" if allow_none else ""), value,
                             show=type(value).__name__)
    return value


def check_str(name: str, value) -> str:
    """A ``str``."""
    if not isinstance(value, str):
        raise argument_error(TypeError, name, "a str", value, show=type(value).__name__)
    return value


def check_module(name: str, value):
    """A ``torch.nn.Module``."""
    if not isinstance(value, torch.nn.Module):
        raise argument_error(TypeError, name, "an nn.Module", value, show=type(value).__name__)
    return value


def check_dtype(name: str, value, *, floating: bool = False, allow_none: bool = False) -> torch.dtype | None:
    """A ``torch.dtype`` (a floating one with ``floating=True``), or ``None`` if allowed."""
    if value is None and allow_none:
        return None
    requirement = "a floating-point torch.dtype" if floating else "a torch.dtype"
    if allow_none:
        requirement += " or None"
    if not isinstance(value, torch.dtype):
        raise argument_error(TypeError, name, requirement, value, f"e.g. {name}=torch.float32")
    if floating and not value.is_floating_point:
        raise argument_error(ValueError, name, requirement, value, f"e.g. {name}=torch.float32")
    return value


def check_device(name: str, value, *, allow_none: bool = True) -> torch.device | None:
    """A ``torch.device`` or a string/int naming one (``"cpu"``, ``"cuda:0"``, ``0``), or ``None``."""
    if value is None and allow_none:
        return None
    requirement = "a torch.device, a device string or index" + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, (torch.device, str, int)):
        raise argument_error(TypeError, name, requirement, value, f"e.g. {name}='cpu'")
    try:
        return torch.device(value)
    except (RuntimeError, ValueError):
        raise argument_error(ValueError, name, requirement, value, f"e.g. {name}='cpu'") from None


# ------------------------------------------------------------------------------------ tensors


def check_tensor(name: str, value, *, floating: bool = False, ndim: int | None = None,
                 min_dim: int | None = None, allow_none: bool = False, what: str | None = None):
    """A ``torch.Tensor`` (floating-point, of ``ndim`` or at least ``min_dim`` dimensions, on request)."""
    if value is None and allow_none:
        return None
    kind = "a floating-point torch.Tensor" if floating else "a torch.Tensor"
    requirement = what or kind
    if allow_none:
        requirement += " or None"
    if not isinstance(value, torch.Tensor):
        raise argument_error(TypeError, name, requirement, value, show=type(value).__name__)
    if floating and not value.is_floating_point():
        raise argument_error(TypeError, name, requirement, value, f"convert it first, e.g. {name}.float()",
                             show=f"dtype {value.dtype}")
    if ndim is not None and value.dim() != ndim:
        raise argument_error(ValueError, name, what or f"a {ndim}-dim tensor", value,
                             show=f"shape {tuple(value.shape)}")
    if min_dim is not None and value.dim() < min_dim:
        raise argument_error(ValueError, name, what or f"a tensor of at least {min_dim} dimensions", value,
                             show=f"shape {tuple(value.shape)}")
    return value


def check_shape(name: str, value: torch.Tensor, shape: Sequence[int], *, meaning: str | None = None) -> None:
    """Raise unless ``value.shape == shape``; ``meaning`` says what the axes hold."""
    shape = tuple(shape)
    if tuple(value.shape) != shape:
        requirement = f"shape {shape}" + (f" ({meaning})" if meaning else "")
        raise argument_error(ValueError, name, requirement, value, show=f"{tuple(value.shape)}", verb="have")


def check_per_channel(name: str, value, size: int | Sequence[int], *,
                      meaning: str | None = "one entry per channel"):
    """``None`` or a tensor of shape ``(size,)`` (``size`` if a tuple): weights, biases, running buffers."""
    if value is None:
        return None
    shape = (size,) if isinstance(size, int) else tuple(size)
    check_tensor(name, value, allow_none=True)
    check_shape(name, value, shape, meaning=meaning)
    return value


def check_seed(value, *, name: str = "seed") -> int:
    """``value`` as a seed for ``torch.Generator.manual_seed`` and numpy: an int in ``[0, 2**63 - 1]``."""
    return check_int(name, value, minimum=0, maximum=2**63 - 1)
