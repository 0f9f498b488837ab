"""Request parameters, one typed model for every front door: validated here, once per request, with one
message per mistake that says what to send.

The HF contract reads them from the query string and the JSON body's ``parameters``, the v2 protocol
from its request ``parameters``, the page and MCP from their inputs; all of them call :func:`parse`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from space.errors import BadParameter

# How logits become scores: transformers' ImageClassificationPipeline ``function_to_apply`` values.
FUNCTIONS = ("sigmoid", "softmax", "none")
Function = Literal["sigmoid", "softmax", "none"]
FUNCTION_HELP = (
    "How logits become scores, as in transformers' image-classification pipeline: sigmoid, softmax or "
    "none (raw logits). Default: the model's own (sigmoid for multi-label or one-label models, none for "
    "regression, else softmax)."
)
TOP_K_HELP = "How many classes to return (default: SPACE_TOP_K; more than the model has returns them all)."
LABELS_HINT = "GET /labels lists this model's labels in index order"
TARGET_HELP = (
    "The class to explain: a label exactly as GET /labels lists it, or a class index (default: the top "
    "class)."
)


class Params(BaseModel):
    """What a request may ask for beyond its images. None means the default (the settings' or the model's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    top_k: int | None = None
    function_to_apply: Function | None = None
    target: str | int | None = None  # explanations only: a label or a class index

    @field_validator("top_k", mode="before")
    @classmethod
    def _whole_number(cls, value: object) -> object:
        """A whole number of at least 1, from JSON or a query string ("5"); capped at the labels later."""
        if value is None:
            return None
        whole = isinstance(value, float) and value.is_integer()
        number = int(value) if whole or (isinstance(value, str) and value.strip().isdigit()) else value
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ValueError(
                "top_k must be a whole number of at least 1 (more than the model's classes returns them "
                f"all); got {value!r}"
            )
        return number

    @field_validator("function_to_apply", mode="before")
    @classmethod
    def _function(cls, value: object) -> object:
        """Any case, as the pipeline accepts it."""
        if value is None:
            return None
        if isinstance(value, str) and value.strip().lower() in FUNCTIONS:
            return value.strip().lower()
        raise ValueError(
            f"function_to_apply must be one of {', '.join(FUNCTIONS)} (sigmoid: independent probabilities, "
            f"softmax: probabilities that sum to 1, none: raw logits); got {repr(value)[:80]}. Leave it out "
            "for the model's default"
        )

    @field_validator("target", mode="before")
    @classmethod
    def _target(cls, value: object) -> object:
        if value is None or value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(
                f"target must be a label (string) or a class index (whole number); got {value!r}. "
                f"{LABELS_HINT}"
            )
        return value


CLASSIFY = frozenset({"top_k", "function_to_apply"})  # the HF contract's /predict, the page, MCP, the CLI
SCORE = frozenset({"function_to_apply"})  # the v2 protocol: every score, so no top_k
EXPLAIN = frozenset({"target"})


def parse(*sources: object, accepted: frozenset[str] = CLASSIFY) -> Params:
    """One :class:`Params` from ``sources`` (earlier ones win: the query string before the body), or a
    422 listing every mistake at once. A name outside ``accepted`` is a mistake too: a typo
    (``topk``) must not be silently ignored."""
    merged: dict[str, object] = {}
    for source in reversed([s for s in sources if s]):
        if not isinstance(source, Mapping):
            raise BadParameter(f'"parameters" must be an object, e.g. {{"top_k": 5}}; got {source!r:.80}.')
        merged.update({key: value for key, value in source.items() if value is not None})
    mistakes = [
        f"{key!r} is not a parameter here; this route takes {', '.join(sorted(accepted))}"
        for key in merged
        if key not in accepted
    ]
    try:
        params = Params(**{key: value for key, value in merged.items() if key in accepted})
    except ValidationError as error:
        mistakes += [item["msg"].removeprefix("Value error, ") for item in error.errors()]
    if mistakes:
        raise BadParameter("; ".join(mistakes) + ".")
    return params


def target_index(target: str | int | None, labels: list[str]) -> int | None:
    """The class an explanation's ``target`` names: a label (exact, then in any case), or an index (an int,
    or digits that are not themselves a label); None for the top class. 422 when it names no class."""
    if target is None:
        return None
    count = len(labels)
    if isinstance(target, str):
        if target in labels:
            return labels.index(target)
        folded = [label.casefold() for label in labels]
        if target.strip().casefold() in folded:
            return folded.index(target.strip().casefold())
        if not target.strip().lstrip("-").isdigit():
            raise BadParameter(
                f"target {target!r} is not a label of this model. Give a label exactly as {LABELS_HINT}, "
                f"or a class index from 0 to {count - 1}; omit it to explain the top class."
            )
        target = int(target.strip())
    if not 0 <= target < count:
        raise BadParameter(
            f"target index {target} is out of range: this model has {count} classes, 0 to {count - 1}. "
            f"{LABELS_HINT}."
        )
    return target
