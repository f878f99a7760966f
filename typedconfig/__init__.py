"""Typed configuration dataclasses built from plain dicts; a leaf package that model/, data/ and training/ may all use."""
