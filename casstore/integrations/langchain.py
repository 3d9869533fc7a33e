"""LangChain objects in casstore states, through LangChain's own serialization (no pickle).

Any `langchain_core.load.serializable.Serializable` whose class says it is
serializable (`is_lc_serializable()`: messages, documents, prompts, ...) is
stored as the JSON-like dict `langchain_core.load.dump.dumpd` makes of it
and rebuilt with `langchain_core.load.load`. Nothing needs registering:
casstore's codec imports this module the first time it meets an object while
`langchain_core` is loaded (and when it restores a state that holds one), so

    store.snapshot({"messages": [HumanMessage("hi"), AIMessage("hello")]})

just works. `load` only instantiates classes on an allowlist; the default is
LangChain's own `"core"` set (messages, documents, prompts, ...); call
`configure(allowed_objects="messages")` (or a list of classes) to narrow it,
or `"all"` to admit partner classes too.
"""

from __future__ import annotations

import warnings
from typing import Any

from langchain_core.load.dump import dumpd
from langchain_core.load.load import load
from langchain_core.load.serializable import Serializable

from ..codec import register_fallback

CODEC_NAME = "langchain_core:Serializable"

_allowed_objects: Any = "core"


def configure(*, allowed_objects: Any = "core") -> None:
    """Set which classes restore may instantiate (see `langchain_core.load.load`)."""
    global _allowed_objects
    _allowed_objects = allowed_objects


def is_serializable(cls: type) -> bool:
    try:
        return issubclass(cls, Serializable) and bool(cls.is_lc_serializable())
    except TypeError:
        return False


def encode(obj: Serializable) -> Any:
    return dumpd(obj)


def decode(value: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # load() is marked beta
        return load(value, allowed_objects=_allowed_objects)


register_fallback(is_serializable, encode, decode, name=CODEC_NAME)
