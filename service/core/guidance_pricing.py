"""Guidance priced against tokens, for requests that leave guidance to the server.

A guided sample steps two rows (service/core/guidance.py): under load it gets fewer tokens than
the same sample unguided, and every step it takes is a row another request could have used.
The manifest's `prior.guidance.quality` measures labelled samples' quality over k for each
guidance w on one scale (models/export.py guided_quality). For a `guidance: "auto"` request the
engine core asks admission what each choice would get, without admitting either
(Engine.probe), and keeps the one worth more: the quality of its sample at its budget, less
the price of the row-steps it takes (Budget.token_price: what a step buys elsewhere at the
current pressure, the price the quality cap uses; 0 when nothing is short). Idle, the guided
request gets its whole length at no price and is taken at once, after one probe.
"""
from __future__ import annotations

from typing import Callable

from .request import Request


def choose_guidance(engine, make: Callable[[float], Request], guidance: float) -> Request:
    """The request to admit for an "auto" request whose default guidance is `guidance` (> 0):
    make(w) builds the request with guidance w. Neither choice is admitted here."""
    card = engine.spec
    guided = make(guidance)
    price = engine.token_price(guided.priority)
    adm = engine.probe(guided)
    k_guided = adm.planned_tokens if adm.ok else -1
    if price == 0 and k_guided >= guided.max_tokens and card.quality(k_guided, guidance) >= card.quality(k_guided, 0.0):
        return guided
    plain = make(0.0)
    adm = engine.probe(plain)
    if not adm.ok:  # neither fits, or only the guided one: admit that one, or meet plain's refusal
        return guided if k_guided >= 0 else plain
    if k_guided < 0:
        return plain
    k_plain = adm.planned_tokens
    guided_worth = card.quality(k_guided, guidance) - price * 2 * k_guided  # two rows per sample
    plain_worth = card.quality(k_plain, 0.0) - price * k_plain
    return guided if guided_worth > plain_worth else plain
