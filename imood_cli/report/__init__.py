"""Renderers: terminal tables (rich), a self-contained HTML report with plots, Markdown, LaTeX, JSON, CSV."""
