"""How much a unit of a model matters: head importance (heads), neuron and head scores for width pruning (width),
component contribution, criticality and block influence (components), gating units off (ablation), weight scores for
mask pruning (weights).

Pure functions of a model and batches (or of a score callable): no task, no run, no loop over runs; and the criterion
objects a pruner is handed (`pruner.criterion`, base: WeightCriterion, WidthCriterion, BlockCriterion), which call
them. Floor: above models/, hf/ and data/, below scoring/ (which scores a model the way a task chooses) and the
pruners that call them.
"""
