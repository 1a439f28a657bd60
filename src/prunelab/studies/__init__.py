"""The `prunelab heads` and `prunelab components` studies of a finished run (Michel et al. 2019, Wang & Tu 2020):
they load the run, score it under ablations and pruning orders, and write JSON, CSV and plots.

Floor: above training/ (they load runs with training.load_run), beside cli/ and export; nothing below imports them.
"""
