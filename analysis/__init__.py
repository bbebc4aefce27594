"""Analysis of quadrl runs: read runs from MLflow, aggregate across seeds, statistics, figures, reports.

Modules:
    load     -- MLflow runs -> tidy pandas tables (`load_runs`)
    stats    -- per-condition statistics over seeds and comparisons with a control (`summarise`)
    figures  -- learning curves, per-quadrant diagnostics, final metrics with intervals
    tables   -- formatting of the statistics as markdown / aligned text tables
    report   -- markdown report + CLI `quadrl-report` (`build_report`, `main`)
    synthetic -- synthetic sweeps with known effects logged to MLflow (tests, demos)
"""
