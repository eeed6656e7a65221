"""The paper's evaluation protocol (issue 4), one concept per module:

    config      the transfer:/evaluate:/report: sections of params.yaml (paper defaults; no torch)
    results     per-example outcomes of every attack, worst case over attacks per ε
    whitebox    FGSM/PGD over still-robust examples, exactly equal to the naive loop
    transfer    transfer sets: restarts chosen on the source, 8-bit rounding toward the clean pixel
    protocol    which attacks run on one target model, in which order (the cascade)
    boundary    the Boundary attack (foolbox) for Figure 3(b)
    autoattack  AutoAttack, standard version (pyautoattack), at each headline ε
    margins     per-example margins: AN-PGD, FAB, the PGD ε-sweep, and their disagreement
    checks      gradient-masking checks as pass/flag with numbers
    table1      Table 1 beside the paper's numbers, plus the worst-case row
    figures     Figure 3 (four panels) and the margin distributions
    reference   the paper's numbers (package data in reference/, with their source)

``config`` imports nothing heavy (the pipeline's schema imports it); the others are
imported where they are used.
"""
