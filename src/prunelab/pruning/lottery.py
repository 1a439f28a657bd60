"""The lottery-ticket family of Brix, Bahar & Ney (2020), as round plans for `RoundPruner`."""

from __future__ import annotations

import itertools

from prunelab.errors import UserError
from prunelab.pruning.rounds import Round, RoundPruner, iterative_levels


def _levels(sparsity: float, levels: list[float] | None, start: float = 0.0) -> list[float]:
    if levels is None:
        return iterative_levels(sparsity, start)
    levels = [float(x) for x in levels]
    if any(b <= a for a, b in itertools.pairwise(levels)):
        raise UserError(f"pruner.levels must increase, got {levels}")
    if not levels or abs(levels[-1] - sparsity) > 1e-9:
        raise UserError(f"pruner.levels must end at the target sparsity {sparsity}, got {levels}")
    if any(not 0.0 < x < 1.0 for x in levels):
        raise UserError(f"pruner.levels must lie in (0, 1), got {levels}")
    return levels


class LotteryTicketPruner(RoundPruner):
    """LT: train dense; then each round masks the smallest weights of the previous round's result (per
    matrix) and rewinds the survivors to θ_0, up the level schedule."""

    rewind = "init"

    def __init__(self, sparsity: float, levels: list[float] | None = None, **kwargs: object):
        _levels(sparsity, levels)  # validate the list as given, before any truncation

        def plan_for(target: float) -> list[Round]:
            lv = levels if levels is None else [x for x in levels if x <= target + 1e-9]
            return (
                [Round(0.0)] + [Round(s, rewind=self.rewind) for s in _levels(target, lv)] if target else [Round(0.0)]
            )

        super().__init__(sparsity=sparsity, plan=plan_for(sparsity), plan_for=plan_for, **kwargs)  # type: ignore[arg-type]


class StabilizedLotteryTicketPruner(LotteryTicketPruner):
    """SLT: as LT, but the survivors are rewound to θ_t, taken early (rewind_fraction of the round's steps,
    or rewind_step) in the latest round (rewind_from=first: in the dense round, as Frankle et al.)."""

    rewind = "early"


class ConstantLotteryTicketPruner(StabilizedLotteryTicketPruner):
    """CLT: as SLT, then every kept weight of a matrix is set to sign(θ_t) * sqrt(6 / (fan_in + fan_out));
    random_signs=true is the paper's control (random signs instead of θ_t's)."""

    def __init__(
        self, sparsity: float, levels: list[float] | None = None, random_signs: bool = False, **kwargs: object
    ):
        reinit = "constant_random_sign" if random_signs else "constant"
        super().__init__(sparsity=sparsity, levels=levels, reinit=reinit, **kwargs)


class SLTMPPruner(RoundPruner):
    """SLT-MP: SLT rounds to 50% and then 60% (`slt_levels`), then one round of gradual magnitude pruning
    from s_0 = 60% to the target, starting from θ_t with the SLT mask. A target at or below 60% is reached
    by the SLT rounds alone."""

    def __init__(self, sparsity: float, slt_levels: tuple[float, ...] = (0.5, 0.6), **kwargs: object):
        slt = [float(x) for x in slt_levels]

        def plan_for(target: float) -> list[Round]:
            below = [s for s in slt if s <= target + 1e-9]
            plan = [Round(0.0)] + [Round(s, rewind="early") for s in below]
            if below and target > below[-1]:
                plan.append(Round(target, rewind="early", mp_from=below[-1]))
            elif not below and target > 0:
                plan.append(Round(target, rewind="early"))
            return plan

        super().__init__(sparsity=sparsity, plan=plan_for(sparsity), plan_for=plan_for, **kwargs)  # type: ignore[arg-type]


class MPSLTPruner(RoundPruner):
    """MP-SLT: one round of gradual magnitude pruning from dense to `intermediate_sparsity` (s_i), then SLT
    rounds from that mask up the level schedule to the target, rewinding to θ_t of the latest round."""

    def __init__(
        self, sparsity: float, intermediate_sparsity: float = 0.6, levels: list[float] | None = None, **kwargs: object
    ):
        def plan_for(target: float) -> list[Round]:
            s_i = min(intermediate_sparsity, target)
            plan = [Round(s_i, mp_from=0.0)]
            if target > s_i + 1e-9:
                lv = levels if levels is None else [x for x in levels if x <= target + 1e-9]
                plan += [Round(s, rewind="early") for s in _levels(target, lv, start=s_i)]
            return plan

        super().__init__(sparsity=sparsity, plan=plan_for(sparsity), plan_for=plan_for, **kwargs)  # type: ignore[arg-type]
