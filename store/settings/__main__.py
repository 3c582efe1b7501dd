"""`python -m store.settings`: print the configuration table (Markdown)."""

from store.settings.table import render_table

print(render_table())
