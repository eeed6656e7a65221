"""The report: Table 1, Figure 3, the margin distributions and the summary, made from the
models' evaluation results (``mma.evaluation``) beside the paper's numbers.

    table1      Table 1 beside the paper's numbers, plus the worst-case row (markdown, CSV)
    figures     Figure 3 (four panels) and the margin distributions (PNG)
    checks      gradient-masking checks as pass/flag with numbers
    summary     AutoAttack beside PGD and the anchors, margins, Boundary, checks (json, markdown)
    reference   the paper's numbers (package data in reference/, with their source)
    spread      numbers over training seeds (mean ± sample sd) and the "not distinguishable" rule
    format      how numbers and names are written

Cells are found by record fields (``mma.evaluation.records``), never by parsing keys.
"""
