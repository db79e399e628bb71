"""The one registry pattern of the project: a decorator, a dict and ``names(pattern)``.

Every place where a config string becomes a class or a callable (surgery variants, conv
backends, noise stages, datasets, ...) owns one :class:`Registry`. Strings are resolved at
that boundary only; code below it receives objects.
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Mapping
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import ConfigError, UnknownNameError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A named mapping from strings to objects with helpful lookup errors.

    Args:
        kind: What the registry holds, used in error messages (e.g. ``"surgery variant"``).

    Example:
        >>> VARIANTS = Registry("variant")
        >>> @VARIANTS.register("vit")
        ... def _vit(model, cfg): ...
        >>> VARIANTS.names()
        ['vit']
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, *, override: bool = False) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name`` and returns it unchanged.

        Raises:
            ValueError: if ``name`` is already taken and ``override`` is false.
        """

        def _register(obj: T) -> T:
            if name in self._entries and not override:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered ({self._entries[name]!r}); "
                    f"pick another name or pass override=True"
                )
            self._entries[name] = obj
            return obj

        return _register

    def get(self, name: str) -> T:
        """Return the object registered under ``name``.

        Raises:
            UnknownNameError: (a ``KeyError``) naming the unknown entry, the closest matches and
                all available names.
        """
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), self._entries, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(self.names()) or '(none)'}"
            ) from None

    def create(self, spec: str | Mapping[str, Any], **extra: Any) -> Any:
        """Call the entry named by ``spec`` (``"name"`` or ``{"name": ..., **options}``) with its options.

        Raises:
            UnknownNameError: unknown name.
            ConfigError: options that the entry's signature does not accept (lists the accepted ones).
        """
        options = {"name": spec} if isinstance(spec, str) else dict(spec)
        name = options.pop("name", None)
        if name is None:
            raise ConfigError(f"a {self.kind} config needs a 'name' (one of {', '.join(self.names())})")
        factory = self.get(name)
        options.update(extra)
        try:
            inspect.signature(factory).bind(**options)
        except TypeError as e:
            params = [p for p in inspect.signature(factory).parameters if p not in ("self", "args", "kwargs")]
            raise ConfigError(f"{self.kind} {name!r} does not accept these options ({e}); it takes {params}") from None
        return factory(**options)

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a shell-style ``pattern``."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
