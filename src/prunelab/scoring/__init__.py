"""The scores the tasks choose for the studies and the component pruner: corpus BLEU of beam decodes, accuracy in
percent, negated perplexity (scores), each under many variants of a model with components zeroed (variants), behind
one Scorer protocol (scoring).

Floor: above criteria/ (it zeroes units with criteria.ablation.gates_off), below pruning/, callbacks/ and tasks/.
"""
