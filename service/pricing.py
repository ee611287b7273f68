"""What model tokens cost: the shipped price table (`data/prices.toml`), an operator's file over it
(`QASYNTH_PRICES_FILE`), and a request's own `pricing`.

A price is looked up by provider and model id: the key itself, or the key followed by a date or
"-latest" (dated snapshots cost what their alias does). The embedded local model costs nothing.
A model with no price has cost `None` (unknown), never 0. Batch calls cost `batch_discount` times
the standard price.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import msgspec

from service.wire.base import Usage
from service.wire.pricing import ModelPrice

__all__ = ["FREE", "SHIPPED", "PriceTable", "PricingError", "cost_of", "round_usd"]

SHIPPED = Path(__file__).parent / "data" / "prices.toml"
FREE = ModelPrice(input=0.0, output=0.0, cached_input=0.0, cache_write=0.0, cache_min_tokens=0)
_SUFFIX = re.compile(r"-(?:latest|\d{8}|\d{4}-\d{2}-\d{2})$")


class PricingError(ValueError):
    """A price file that cannot be read: the message names the file and the entry."""


class _Entry(ModelPrice, kw_only=True):
    provider: str


class _File(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    taken: str = ""
    source: str = ""
    currency: str = "USD"
    batch_discount: float = 0.5
    models: dict[str, _Entry] = {}


class PriceTable:
    """Prices by (provider, model key), with the date they were taken."""

    def __init__(self, prices: dict[tuple[str, str], ModelPrice], *, taken: str, batch_discount: float):
        self.prices = prices
        self.taken = taken
        self.batch_discount = batch_discount

    @classmethod
    def load(cls, override: str | Path | None = None) -> PriceTable:
        """The shipped table, with the entries of `override` (same format) replacing or adding to it."""
        shipped = _read(SHIPPED)
        prices = {(e.provider, key): _price(e) for key, e in shipped.models.items()}
        taken, discount = shipped.taken, shipped.batch_discount
        if override is not None:
            extra = _read(Path(override))
            prices |= {(e.provider, key): _price(e) for key, e in extra.models.items()}
            taken = extra.taken or taken
            discount = extra.batch_discount
        return cls(prices, taken=taken, batch_discount=discount)

    def lookup(self, provider: str, model: str) -> ModelPrice | None:
        if provider == "local":
            return FREE
        price = self.prices.get((provider, model))
        if price is None:
            base = _SUFFIX.sub("", model)
            price = self.prices.get((provider, base))
        return price

    def price_for(self, provider: str, model: str, override: ModelPrice | None) -> ModelPrice | None:
        """A request's own price wins over the table's."""
        if override is not None:
            return _complete(override)
        return self.lookup(provider, model)

    def quote(
        self, provider: str, model: str, override: ModelPrice | None
    ) -> tuple[ModelPrice | None, str | None]:
        """A job's price and where it was taken ("request" for a spec's own `pricing`, else the
        table's date): one answer for every way a job is run."""
        return self.price_for(provider, model, override), "request" if override is not None else self.taken


def _read(path: Path) -> _File:
    try:
        return msgspec.convert(tomllib.loads(path.read_text(encoding="utf-8")), _File)
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise PricingError(f"price file {path}: {exc}") from exc


def _price(entry: _Entry) -> ModelPrice:
    fields = {f: getattr(entry, f) for f in ModelPrice.__struct_fields__}
    return _complete(ModelPrice(**fields))


def _complete(price: ModelPrice) -> ModelPrice:
    """A price that names no cache prices bills cached tokens like fresh ones."""
    return msgspec.structs.replace(
        price,
        cached_input=price.input if price.cached_input is None else price.cached_input,
        cache_write=price.input if price.cache_write is None else price.cache_write,
    )


def round_usd(value: float) -> float:
    return round(value, 6)


def cost_of(
    usage: Usage, price: ModelPrice | None, *, batch: bool = False, discount: float = 0.5
) -> float | None:
    """Dollars for `usage` (whose `input_tokens` include its cache reads and writes); None: no price."""
    if price is None:
        return None
    cached_in = price.input if price.cached_input is None else price.cached_input
    write = price.input if price.cache_write is None else price.cache_write
    fresh = max(0, usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens)
    dollars = (
        fresh * price.input
        + usage.cached_tokens * cached_in
        + usage.cache_write_tokens * write
        + usage.output_tokens * price.output
    ) / 1_000_000
    return round_usd(dollars * (discount if batch else 1.0))
