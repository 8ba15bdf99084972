"""The demo's transform step: a score computed in pandas, a country filter, and the identifier renamed.

Each call gets one chunk of the query (an Arrow-backed DataFrame whose index is the source row number)
and a read-only context (activation, run_date, params); what it returns is cleaned like a query's rows."""

import pandas as pd

TIER_BONUS = {"gold": 300, "silver": 100}


def shape(chunk: pd.DataFrame, context) -> pd.DataFrame:
    countries = context.params["countries"].split(",")
    chunk = chunk[chunk["country"].isin(countries)]
    bonus = chunk["loyalty_tier"].map(TIER_BONUS).fillna(0)
    chunk = chunk.assign(score=chunk["lifetime_value"] + 50 * chunk["orders_count"] + bonus)
    chunk = chunk[chunk["score"] >= context.params["min_score"]]
    return chunk.rename(columns={"mail": "emailAddress"})
