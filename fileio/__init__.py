"""Files that other packages write: atomic writes (atomic.py), the check of an --out folder before long work
(folders.py), the opening of results pages (pages.py) and the markdown and CSV tables of pages and reports
(tables.py)."""
