"""The demo warehouse: a SQLite file of customers with the dirt real CRMs carry, so every cleaning rule
has something to bite on. Built from a fixed seed, with dates relative to its creation day so the
sample audiences are never empty."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
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


#: bumped when the demo's tables change, so an older demo file is rebuilt
DEMO_VERSION = 5


#: parallel runs (`run --jobs`) reach the demo warehouse together: one builds it, the others wait for it
_building = threading.Lock()


def ensure_demo_warehouse(url: str) -> bool:
    """Create the demo database behind a ``sqlite:///`` URL if it is missing or older; True if created."""
    database = sa.make_url(url).database
    if not database or database == ":memory:":
        return False
    path = Path(database)
    with _building:
        if path.exists() and _version(path) == DEMO_VERSION:
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


def _version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def _build(path: Path, today: date) -> None:
    rows = demo_customers(today)
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {DEMO_VERSION}")
        _build_participations(db, rows, today)
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


_CAMPAIGNS = [(4101, "Summer quiz", 13), (4102, "Win a city trip", 2), (4103, "Football predictions", 7)]
_DEVICES = ["desktop", "mobile", "mobile"]
_TEAMS = ["Club Brugge", "Anderlecht", "Standard", "Genk", None]


def _build_participations(db: sqlite3.Connection, customers: list[DemoCustomer], today: date) -> None:
    """Qualifio participations (one row per participation, Qualifio's variable names) and Didomi
    consent events, for a slice of the customers, with the mistakes forms let through."""
    rng = random.Random(SEED + 1)
    db.execute(
        """CREATE TABLE qualifio_participations (
               participation_id INTEGER PRIMARY KEY, campaign_id INTEGER, campaign_title TEXT,
               campaign_type INTEGER, participated_at TEXT, language TEXT, device TEXT, user_agent TEXT,
               firstname TEXT, lastname TEXT, email TEXT, address TEXT, number TEXT, box TEXT, zip TEXT,
               locality TEXT, country TEXT, birthday TEXT, gender TEXT, function TEXT, phone TEXT,
               company TEXT, actito_footballTeam TEXT, optin_newsletter INTEGER, optin_partners INTEGER,
               civility TEXT, password TEXT, completed INTEGER)"""
    )
    db.execute(
        """CREATE TABLE didomi_consents (
               organization_user_id TEXT, consent_newsletter TEXT, consent_partners TEXT,
               consent_promotions TEXT, preferred_language TEXT, updated_at TEXT, metadata TEXT)"""
    )
    participation_id = 900_000
    # civility and password come from their own generator: the other columns' draws do not depend on them;
    # so do the names, devices and completion added later
    sso = random.Random(SEED + 2)
    later = random.Random(SEED + 3)
    for customer in customers[:2500]:
        email = customer.email.strip().lower() if customer.email else None
        if not email or "@" not in email or " " in email:
            continue
        for _ in range(1 + int(rng.random() < 0.2)):
            participation_id += 1
            campaign, title, kind = rng.choice(_CAMPAIGNS)
            when = datetime.combine(today, time(9)) - timedelta(days=rng.randint(0, 60), seconds=rng.randint(0, 86_399))
            db.execute(
                "INSERT INTO qualifio_participations VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (participation_id, campaign, title, kind, f"{when:%Y-%m-%d %H:%M:%S}",
                 rng.choice(["fr", "nl", "en"]), _dirty_device(later, rng.choice(_DEVICES)), "Mozilla/5.0 (demo)",
                 _dirty_name(later, customer.first_name), customer.last_name, email, "Rue de la Loi",
                 str(rng.randint(1, 200)),
                 None, str(rng.randint(1000, 9999)), "Bruxelles", _dirty_country(rng, customer.country),
                 _dirty_birthday(rng), gender := _dirty_gender(rng), None, _dirty_phone(rng), None,
                 rng.choice(_TEAMS), int(rng.random() < 0.7), int(rng.random() < 0.3),
                 _dirty_civility(sso, gender), f"demo-secret-{sso.randrange(10**6):06d}",
                 int(later.random() >= 0.05)),  # 5 % stopped before the end of the campaign
            )
        if rng.random() < 0.6:
            db.execute(
                "INSERT INTO didomi_consents VALUES (?,?,?,?,?,?,?)",
                (email if rng.random() < 0.95 else f"unknown{customer.customer_id}@example.com",
                 rng.choice(["true", "false", "true"]), rng.choice(["true", "false", None]),
                 rng.choice(["1", "0"]), rng.choice(["fr", "nl", "en", "de"]), f"{today:%Y-%m-%d}",
                 _didomi_metadata(later, customer)),
            )


def _didomi_metadata(rng: random.Random, customer: DemoCustomer) -> str | None:
    """Didomi's user metadata object as JSON: properties the demo table has (loyaltyTier, gdprConsent),
    one it has not (favouriteShop), sometimes none, once in a while not JSON at all."""
    dice = rng.random()
    if dice < 0.05:
        return None
    if dice < 0.06:
        return "{loyaltyTier: gold"
    metadata = {"loyaltyTier": customer.loyalty_tier, "gdprConsent": rng.random() < 0.8}
    if rng.random() < 0.3:
        metadata["favouriteShop"] = rng.choice(["Namur", "Liège", "Gent"])
    return json.dumps(metadata, ensure_ascii=False)


def _dirty_name(rng: random.Random, name: str) -> str:
    """What a form lets through a first-name field: a digit, a smiley, a full stop (Qualifio's "no special
    characters" drops them)."""
    return rng.choice([f"{name}2", f"{name} :-)", f"{name[0]}.", "🙂"]) if rng.random() < 0.02 else name


def _dirty_device(rng: random.Random, device: str) -> str:
    """Devices as trackers write them: another case, a user agent, or one Qualifio does not send (tablet)."""
    if rng.random() >= 0.06:
        return device
    return rng.choice([device.upper(), device.title(), "tablet",
                       "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"])


def _dirty_birthday(rng: random.Random) -> str | None:
    dice = rng.random()
    if dice < 0.05:
        return None
    if dice < 0.08:
        return rng.choice(["31/02/1990", "1990-13-01", "yesterday"])
    return f"{rng.randint(1950, 2008)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _dirty_gender(rng: random.Random) -> str | None:
    return rng.choice(["M", "F"] * 8 + ["f", None, None, "X"])


def _dirty_civility(rng: random.Random, gender: str | None) -> str | None:
    """Qualifio's SSO civility, written as forms let people write it (Dr is not one OpenField takes)."""
    if gender in ("M", "F", "f"):
        return rng.choice({"M": ["M", "M", "Mr", "Monsieur"], "F": ["MME", "MME", "Mme", "Madame"]}[gender.upper()])
    return rng.choice([None, "Dr"])


def _dirty_phone(rng: random.Random) -> str | None:
    dice = rng.random()
    if dice < 0.3:
        return None
    if dice < 0.35:
        return "0470 12 34 56"  # no international prefix: cannot be sent as is
    return f"+32 47{rng.randint(0, 9)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}"


def _dirty_country(rng: random.Random, country: str) -> str:
    return rng.choice([country] * 30 + ["Belgium"])
