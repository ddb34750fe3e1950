"""The core: plain functions and dataclasses, no CLI and no terminal rendering."""
