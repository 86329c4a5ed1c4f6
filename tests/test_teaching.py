"""TEACHING.md, the teacher's guide: its links land on sections that exist, and its 2-hour path is 2 hours."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "TEACHING.md").read_text()
LINK = re.compile(r"\]\((notebooks/[^)#]+\.ipynb)(?:#([^)]+))?\)")


def heading_anchors(notebook: Path) -> set[str]:
    """The ids JupyterLab gives a notebook's markdown headings: the heading's text, spaces made '-'."""
    anchors = set()
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                match = re.match(r"^#{1,6} (.+)$", line)
                if match:
                    anchors.add(match.group(1).strip().replace(" ", "-"))
    return anchors


def test_every_link_opens_an_existing_notebook_at_an_existing_section():
    links = LINK.findall(GUIDE)
    assert len(links) > 40
    for path, anchor in links:
        notebook = ROOT / path
        assert notebook.is_file(), f"TEACHING.md links to {path}, which does not exist"
        if anchor:
            assert anchor in heading_anchors(notebook), f"{path} has no section #{anchor}"


def test_every_notebook_has_its_questions_section():
    names = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    for name in names:
        number, title = name[:2], name[3:]
        assert re.search(rf"^\*\*{number} ", GUIDE, flags=re.M), f"no questions for notebook {name}"
        assert f"notebooks/{name}.ipynb" in GUIDE, title


def _minutes(section: str) -> int:
    body = GUIDE.split(section, 1)[1].split("\n## ", 1)[0]
    return sum(int(m) for m in re.findall(r"^\| (\d+) \|", body, flags=re.M))


def test_the_class_path_takes_two_hours_and_the_workshop_a_day():
    assert _minutes("## A 2-hour class") == 120
    day = _minutes("## A one-day workshop")
    assert 6 * 60 <= day <= 8 * 60, f"the one-day workshop adds up to {day} minutes"


def test_the_readme_points_teachers_to_the_guide():
    assert "[TEACHING.md](TEACHING.md)" in (ROOT / "README.md").read_text()


# ---- the glossary ------------------------------------------------------------------------------------------------

GLOSSARY = (ROOT / "GLOSSARY.md").read_text()


def glossary_rows() -> list[list[str]]:
    rows = [line.strip("|").split(" | ") for line in GLOSSARY.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[2:]]        # after the header and its rule


def notebook_text(notebook: Path) -> str:
    return "\n".join("".join(cell["source"]) for cell in json.loads(notebook.read_text())["cells"]).lower()


def test_every_glossary_term_has_three_languages_and_a_section_that_teaches_it():
    rows = glossary_rows()
    assert len(rows) >= 25
    for term, english, thai, korean, where in rows:
        assert english and re.search("[\u0e00-\u0e7f]", thai) and re.search("[\uac00-\ud7a3]", korean), term
        (path, anchor), = LINK.findall(where)
        notebook = ROOT / path
        assert anchor in heading_anchors(notebook), f"{term}: {path} has no section #{anchor}"
        assert term.lower() in notebook_text(notebook), f"{term}: the notebook it links to never names it"
    terms = [row[0] for row in rows]
    assert len(set(terms)) == len(terms)


def test_the_course_links_the_glossary():
    assert "[GLOSSARY.md](GLOSSARY.md)" in (ROOT / "README.md").read_text()
    assert "](../glossary.md)" in notebook_text(ROOT / "notebooks" / "00_start_here.ipynb")
