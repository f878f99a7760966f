"""Files that other packages write: atomic writes (atomic.py) and the markdown and CSV tables of results pages
and reports (tables.py)."""
