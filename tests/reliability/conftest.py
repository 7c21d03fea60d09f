"""Fixtures of the fault suite: they live in ``reliability_helpers`` (a unique module name, so the
tests can import its helpers without another folder's ``conftest`` shadowing it)."""

from reliability_helpers import *  # noqa: F401,F403  (pytest collects the fixtures imported here)
