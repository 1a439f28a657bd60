from prunelab.pruning.attendout import AttendOutPruner
from prunelab.pruning.base import MaskPruner, NoPruner, Pruner
from prunelab.pruning.components import ComponentPruner
from prunelab.pruning.heads import HeadPruner
from prunelab.pruning.lottery import (
    ConstantLotteryTicketPruner,
    LotteryTicketPruner,
    MPSLTPruner,
    SLTMPPruner,
    StabilizedLotteryTicketPruner,
)
from prunelab.pruning.magnitude import MagnitudePruner
from prunelab.pruning.oneshot import OneShotPruner
from prunelab.pruning.rounds import Round, RoundPruner, iterative_levels
from prunelab.pruning.structured import StructuredPruner

__all__ = [
    "AttendOutPruner",
    "ComponentPruner",
    "ConstantLotteryTicketPruner",
    "HeadPruner",
    "LotteryTicketPruner",
    "MPSLTPruner",
    "MagnitudePruner",
    "MaskPruner",
    "NoPruner",
    "OneShotPruner",
    "Pruner",
    "Round",
    "RoundPruner",
    "SLTMPPruner",
    "StabilizedLotteryTicketPruner",
    "StructuredPruner",
    "iterative_levels",
]
