"""serving bench: the load generator and its reports (`serving bench --help`).

cli.py reads the command line and shows the live view; run.py plans the steps, merges what the load
processes (load.py) report each second and judges the thresholds; report.py and plots.py write the report
folder."""
