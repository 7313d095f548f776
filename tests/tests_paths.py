"""Paths of test assets, importable from any test module."""

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
SPACE_REWARD = f"{ASSETS / 'toy_rewards.py'}:space_share"
