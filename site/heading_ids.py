"""Heading ids as JupyterLab makes them, for the site (site/conf.py)."""


def jupyterlab_heading_id(text: str) -> str:
    """JupyterLab's id for a heading: its text, spaces made '-', so ``notebook.ipynb#Section-title`` links work
    in JupyterLab and on the site alike."""
    return text.strip().replace(" ", "-")
