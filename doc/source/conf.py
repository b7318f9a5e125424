"""Sphinx configuration for the cdm-sync documentation."""

project = "cdm-sync"
author = "cdm-sync developers"
copyright = "2026, cdm-sync developers"
extensions: list[str] = []
exclude_patterns: list[str] = []
html_static_path = ["_static"]
html_theme = "alabaster"
