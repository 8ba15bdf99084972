"""The demo warehouse: a SQLite file of ~10k customers with the dirt real CRMs carry.

It exists so that the README demo runs on a fresh machine with no database server, and so that
every cleaning rule has something to bite on: mixed case, stray spaces, ``mailto:`` prefixes,
duplicates, addresses Actito would refuse, and missing values. Generated deterministically (fixed
seed) with dates relative to the day it is created, so the sample audiences are never empty.
"""

from __future__ import annotations

import random
import sqlite3
import unicodedata
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import sqlalchemy as sa

CUSTOMERS = 10_000
SEED = 20261123

_FIRST = ["Emma", "Louis", "Olivia", "Noah", "Léa", "Arthur", "Mila", "Jules", "Zoé", "Liam", "Chloé", "Lucas",
          "Inès", "Adam", "Sofia", "Victor", "Nora", "Hugo", "Elif", "Mohamed", "Anna", "Finn", "Marie", "Tom"]
_LAST = ["Peeters", "Janssens", "Maes", "Dubois", "Lambert", "Dupont", "Martin", "Claes", "Goossens", "Wouters",
         "De Smet", "Leroy", "Jacobs", "Mertens", "Willems", "Renard", "O'Brien", "Müller", "García", "Nguyen"]
_DOMAINS = ["gmail.com", "hotmail.com", "outlook.be", "skynet.be", "telenet.be", "proximus.be", "yahoo.fr",
            "orange.fr", "gmx.de", "example.co.uk", "icloud.com", "company.eu"]
_COUNTRIES = ["BE", "BE", "BE", "FR", "FR", "NL", "LU", "DE"]
_TIERS = ["bronze", "bronze", "bronze", "silver", "silver", "gold"]


@dataclass(frozen=True)
class DemoCustomer:
    customer_id: int
    actito_profile_id: int | None
    email: str | None
    first_name: str
    last_name: str
    country: str
    newsletter_optin: int
    created_at: str
    last_order_at: str | None
    orders_count: int
    lifetime_value: float
    loyalty_tier: str


def ensure_demo_warehouse(url: str) -> bool:
    """Create the demo database behind a ``sqlite:///`` URL if it does not exist yet; True if created."""
    database = sa.make_url(url).database
    if not database or database == ":memory:":
        return False
    path = Path(database)
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".building")
    partial.unlink(missing_ok=True)
    _build(partial, date.today())
    partial.replace(path)  # a half-built demo file is never picked up
    return True


def demo_customers(today: date, count: int = CUSTOMERS) -> list[DemoCustomer]:
    """The demo rows; also loaded into other databases by the tests to compare outputs across dialects."""
    rng = random.Random(SEED)
    return [_customer(rng, customer_id, today) for customer_id in range(1, count + 1)]


def _build(path: Path, today: date) -> None:
    rows = demo_customers(today)
    with sqlite3.connect(path) as db:
        db.execute(
            """CREATE TABLE customers (
                   customer_id INTEGER PRIMARY KEY,
                   actito_profile_id INTEGER,
                   email TEXT,
                   first_name TEXT NOT NULL,
                   last_name TEXT NOT NULL,
                   country TEXT NOT NULL,
                   newsletter_optin INTEGER NOT NULL,
                   created_at TEXT NOT NULL,
                   last_order_at TEXT,
                   orders_count INTEGER NOT NULL,
                   lifetime_value REAL NOT NULL,
                   loyalty_tier TEXT NOT NULL)"""
        )
        db.executemany(
            "INSERT INTO customers VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [tuple(vars(row).values()) for row in rows],
        )


def _customer(rng: random.Random, customer_id: int, today: date) -> DemoCustomer:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    orders = max(0, int(rng.expovariate(1 / 3)))
    created = today - timedelta(days=rng.randint(30, 2000))
    last_order = None
    if orders:
        last_order = (today - timedelta(days=rng.randint(1, min(900, (today - created).days)))).isoformat()
    return DemoCustomer(
        customer_id=customer_id,
        # most customers are known to Actito; profile ids are not the customer ids
        actito_profile_id=None if rng.random() < 0.1 else 100_000 + customer_id * 7,
        email=_dirty_email(rng, first, last, customer_id),
        first_name=first,
        last_name=last,
        country=rng.choice(_COUNTRIES),
        newsletter_optin=int(rng.random() < 0.62),
        created_at=created.isoformat(),
        last_order_at=last_order,
        orders_count=orders,
        lifetime_value=round(orders * rng.uniform(20, 180), 2),
        loyalty_tier=rng.choice(_TIERS),
    )


def _dirty_email(rng: random.Random, first: str, last: str, customer_id: int) -> str | None:
    local = _ascii(f"{first}.{last}".lower().replace(" ", "").replace("'", ""))
    clean = f"{local}{customer_id % 997}@{rng.choice(_DOMAINS)}"
    dice = rng.random()
    if dice < 0.03:
        return None
    if dice < 0.04:
        return ""
    if dice < 0.07:  # a household sharing one address, or the same person twice
        return f"{_ascii(first.lower())}.{customer_id % 40}@family.be"
    if dice < 0.09:
        return rng.choice([
            clean.replace("@", ""),             # no @
            clean.replace(".", "..", 1),        # two dots in a row
            clean.replace("@", "@@"),           # two @
            clean.rsplit(".", 1)[0] + ".c",     # one-letter suffix
            clean.rsplit(".", 1)[0] + ".invalid",  # not a top-level domain
            clean.replace("@", " @"),           # space inside
        ])
    if dice < 0.11:
        return f"{first}.{last}@{rng.choice(_DOMAINS)}"  # accents / apostrophes straight from the name
    if dice < 0.17:
        return clean.upper() if rng.random() < 0.5 else clean.title()
    if dice < 0.21:
        return f"  {clean}\t"
    if dice < 0.22:
        return f"mailto:{clean}"
    return clean


def _ascii(text: str) -> str:
    """How most shops store addresses of people with accented names: the accents dropped."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
