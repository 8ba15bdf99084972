"""audience-sync: warehouse audiences, profiles and consents delivered to Actito."""

__version__ = "0.1.0"
