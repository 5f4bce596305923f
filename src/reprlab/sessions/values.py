"""Session values: tensors that will exist when the session runs, recorded as operations on
symbolic ids (operator overloading) and resolved to tensors afterwards (saved values only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reprlab.sessions import runtime as rt
from reprlab.sessions.errors import SessionError

if TYPE_CHECKING:
    from reprlab.sessions.api import Session


def _ref_args(session: Session, args: Any) -> Any:
    if isinstance(args, Value):
        session._check_owner(args)
        return rt.ref(args._id)
    if isinstance(args, list):
        return [_ref_args(session, a) for a in args]
    if isinstance(args, tuple):
        return tuple(_ref_args(session, a) for a in args)
    if isinstance(args, dict):
        return {k: _ref_args(session, v) for k, v in args.items()}
    return args


def _values_in(args: Any) -> list[Value]:
    if isinstance(args, Value):
        return [args]
    if isinstance(args, (list, tuple)):
        return [v for a in args for v in _values_in(a)]
    if isinstance(args, dict):
        return [v for a in args.values() for v in _values_in(a)]
    return []


class Value:
    """A tensor that will exist when the session runs. ``.value`` gives it afterwards
    (saved values only). Supports indexing, arithmetic, comparisons and common tensor
    methods (argmax, softmax, log_softmax, topk, sum, mean, norm, ...)."""

    __hash__ = object.__hash__

    def __init__(self, session: Session, vid: int, trace: int | None, key: tuple, label: str):
        self._s, self._id, self._trace, self._key, self._label = session, vid, trace, key, label

    def _op(self, fname: str, *args: Any, **kwargs: Any) -> Value:
        return self._s._call(fname, (self, *args), kwargs)

    def _rop(self, fname: str, other: Any) -> Value:
        return self._s._call(fname, (other, self), {})

    def __getitem__(self, key: Any) -> Value:
        return self._op("getitem", key)

    def __add__(self, o: Any) -> Value: return self._op("add", o)
    def __radd__(self, o: Any) -> Value: return self._rop("add", o)
    def __sub__(self, o: Any) -> Value: return self._op("sub", o)
    def __rsub__(self, o: Any) -> Value: return self._rop("sub", o)
    def __mul__(self, o: Any) -> Value: return self._op("mul", o)
    def __rmul__(self, o: Any) -> Value: return self._rop("mul", o)
    def __truediv__(self, o: Any) -> Value: return self._op("truediv", o)
    def __rtruediv__(self, o: Any) -> Value: return self._rop("truediv", o)
    def __matmul__(self, o: Any) -> Value: return self._op("matmul", o)
    def __rmatmul__(self, o: Any) -> Value: return self._rop("matmul", o)
    def __pow__(self, o: Any) -> Value: return self._op("pow", o)
    def __neg__(self) -> Value: return self._op("neg")
    def __abs__(self) -> Value: return self._op("abs")
    def __lt__(self, o: Any) -> Value: return self._op("lt", o)
    def __le__(self, o: Any) -> Value: return self._op("le", o)
    def __gt__(self, o: Any) -> Value: return self._op("gt", o)
    def __ge__(self, o: Any) -> Value: return self._op("ge", o)
    def __eq__(self, o: Any) -> Value: return self._op("eq", o)  # type: ignore[override]
    def __ne__(self, o: Any) -> Value: return self._op("ne", o)  # type: ignore[override]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in rt.METHODS:
            raise AttributeError(
                f"session values support {', '.join(rt.METHODS)}; {name!r} is not one of them")
        return lambda *args, **kwargs: self._op("m:" + name, *args, **kwargs)

    def __iter__(self) -> Any:
        raise TypeError("a session value cannot be iterated while recording; index it instead")

    def __bool__(self) -> bool:
        raise SessionError("a session value has no truth value while the session records; "
                           "use s.exit(when=value) to stop on a condition")

    @property
    def value(self) -> Any:
        """The tensor, once the session has run (saved values only)."""
        return self._s._value_of(self)

    def __repr__(self) -> str:
        return f"<session value {self._label}>"
