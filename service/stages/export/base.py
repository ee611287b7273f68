"""The one interface every export format implements, and the encodings of its payload."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import msgspec

from service.wire.export import ExportOptions, LeftOut, Review
from service.wire.generate import Pair

__all__ = ["Export", "Exporter"]

_json = msgspec.json.Encoder()


@dataclass(frozen=True, kw_only=True)
class Export:
    """A finished export: `kind` says whether `payload` is one JSON document, JSONL records or bytes."""

    format: str
    kind: Literal["json", "jsonl", "bytes"]
    payload: Any
    media_type: str
    filename: str
    exported: int
    left_out: LeftOut

    def body(self) -> bytes:
        if self.kind == "bytes":
            return bytes(self.payload)
        if self.kind == "json":
            return _json.encode(self.payload)
        return b"".join(self.lines())

    def lines(self) -> Iterator[bytes]:
        """One JSON value a line: a JSONL format's records, or a JSON list's items (NDJSON streaming)."""
        if self.kind == "jsonl" or (self.kind == "json" and isinstance(self.payload, list)):
            buf = bytearray()
            for record in self.payload:
                _json.encode_into(record, buf)
                buf.extend(b"\n")
                yield bytes(buf)
                buf.clear()
        else:
            yield self.body()


class Exporter(Protocol):
    def __call__(
        self, pairs: Sequence[Pair], reviews: Sequence[Review], options: ExportOptions
    ) -> Export: ...
