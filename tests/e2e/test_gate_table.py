"""docs/gate.md is the gate's decision on every package file, and stays true."""
import os

from gate_table import HEADER, table

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "gate.md")


def test_docs_gate_table_matches_the_daemon(tmp_path):
    rows = table(tmp_path / "d")
    with open(DOC) as f:
        doc = f.read()
    expected = HEADER + "\n".join(rows) + "\n"
    assert doc == expected, "docs/gate.md is stale: regenerate with tests/e2e/gate_table.py"
    # What the issue names: CT, CR, US, SC, localizers, MRA projections, abdomen MR.
    body = "\n".join(rows)
    for needle in ["not_mr_sop_class", "localizer_description", "projection_or_reformat",
                   "derived_image", "geometry_missing"]:
        assert needle in body, needle
    assert "passed" not in [r.rsplit("|", 2)[-2].strip() for r in rows], "no package file is a usable brain MR"
