"""The paper's evaluation protocol: what attacks a model and records the outcomes
(the report, ``mma.report``, turns them into tables and figures).

    records     Record: what one evaluated number is; its key, built and parsed in one place
    results     per-example outcomes of every record, worst case over attacks per ε
    protocol    which attacks run on one target model, in which order (the cascade)
    whitebox    FGSM/PGD over still-robust examples, exactly equal to the naive loop
    transfer    transfer sets: restarts chosen on the source, 8-bit rounding toward the clean pixel
    boundary    the Boundary attack (foolbox) for Figure 3(b)
    autoattack  AutoAttack, standard version (pyautoattack), at each headline ε
    margins     per-example margins: AN-PGD, FAB, the PGD ε-sweep, and their disagreement
    finite      every forward of an evaluation checked: non-finite logits stop it, naming the model

The settings are ``mma.config.evaluation`` (no torch).
"""
