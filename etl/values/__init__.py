"""Vendor-neutral value rules: what an e-mail address, an id, a date, a phone number, a country,
a language or a number must look like, and how each is written, shared by every stage and
destination so one value gets one verdict wherever it goes. The lowest layer above etl.errors."""
