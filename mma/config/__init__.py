"""The schema of params.yaml: plain, validated data, one module per part.

    params       the whole file (``Params``), ``load_params`` and the checks that span sections
    data         ``data:`` (``DataParams``) and the settings resolved from it (its MNIST source, the data's name)
    compute      ``compute:`` (``ComputeParams``), the speed switches; mma/compute.py applies them
    model        one entry of ``models``: architecture, method (STD / PGD / MMA), optimiser
    evaluation   ``attacks`` (every named attack setting, stated once), ``table1``,
                 ``evaluate`` and ``report``
    reader       the bounded YAML reader every params file goes through

This module holds what they share: the number types, ``Strict`` and ``ParamsError``.  Nothing
here imports torch or any other part of ``mma``: the CLI and the Snakefile validate a params
file without paying for either, and every other module may import this package.

Every number of the schema has one of the types below, scalar or inside a list: finite
(no nan, no inf), strictly typed (``true`` is not 1, ``"3"`` is not 3; an integer is a
valid float) and in its range.  Fields narrow them further with ``Field(le=..., lt=...)``.
"""

from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

# floats: an int is accepted (3 → 3.0), a bool or a string is not, nan and inf never
Finite = Annotated[float, pydantic.Strict(), Field(allow_inf_nan=False)]
PositiveFinite = Annotated[float, pydantic.Strict(), Field(gt=0, allow_inf_nan=False)]
NonNegativeFinite = Annotated[float, pydantic.Strict(), Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, pydantic.Strict(), Field(ge=0, le=1, allow_inf_nan=False)]  # in [0, 1]
# integers: a bool, a float (3.0) or a string is not one
Int = Annotated[int, pydantic.Strict()]
NonNegativeInt = Annotated[int, pydantic.Strict(), Field(ge=0)]
PositiveInt = Annotated[int, pydantic.Strict(), Field(ge=1)]
Bool = Annotated[bool, pydantic.Strict()]  # true/false only (not 1, "yes" as a string, ...)

# How L2 PGD starts and projects (mma/attacks/core.py, ``L2_FORMS``), a setting of every place
# that runs L2 PGD (a model's training and validation attacks, an evaluation attack, the margins'
# AN-PGD).  "advertorch", the authors' (and the default): start at a uniform random image minus
# x scaled to length ε, each step clamped to the image box and then scaled into the ball;
# "torchattacks": a uniform direction with a length uniform in [0, ε], each step scaled into
# the ball and then clamped to the box.  Linf PGD is the same either way.
L2PGD = Literal["advertorch", "torchattacks"]
L2_PGD_DEFAULT = "advertorch"


def increasing(values, what: str) -> None:
    """Raise ValueError unless ``values`` strictly increase (each ε once, steps in order)."""
    for a, b in zip(values, values[1:]):
        if not b > a:
            raise ValueError(f"{what} must increase strictly, got {a} then {b}")


class Strict(BaseModel):
    """Every section: unknown keys are refused, values never change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ParamsError(Exception):
    """A params file that cannot be used; the message is one line naming the key."""


def short(value: Any, limit: int = 60) -> str:
    """A bounded repr for error messages: a huge (alias-expanded) value costs no more than a small one."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 2, 4, 4, 4, 4
    r.maxstring, r.maxother, r.maxlong = limit, limit, limit
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
