"""The Recipe the trunk hands a task (prunelab.tasks.recipe, training.task): the flat `task/` keys split into the
task's own settings, the recipe's and `distill`; an optimizer named by a `_target_` node; one error line for a bad
value."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from prunelab.errors import UserError
from prunelab.tasks.recipe import Recipe
from prunelab.training.task import build_recipe, split_task_config


def test_task_keys_split_into_the_task_the_recipe_and_distill() -> None:
    node = OmegaConf.create(
        {
            "_target_": "prunelab.tasks.TranslationTask",
            "_partial_": True,
            "lr": 1e-3,
            "betas": [0.9, 0.999],
            "beam_size": 4,
            "val_beam_size": "${.beam_size}",
            "distill": {"teacher": None, "alpha": 0.5},
        }
    )
    own, recipe, distill = split_task_config(node)
    assert dict(own) == {
        "_target_": "prunelab.tasks.TranslationTask",
        "_partial_": True,
        "beam_size": 4,
        "val_beam_size": 4,
    }
    assert recipe == {"lr": 1e-3, "betas": [0.9, 0.999]} and distill == {"teacher": None, "alpha": 0.5}
    assert build_recipe(recipe) == Recipe(lr=1e-3, betas=(0.9, 0.999))


def test_an_optimizer_named_by_its_target_gets_the_peak_lr() -> None:
    recipe = build_recipe({"optimizer": {"_target_": "torch.optim.SGD", "momentum": 0.9}, "lr": 0.5})
    params = [torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(2))]
    opt = recipe.build(params)
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["lr"] == 0.5 and opt.defaults["momentum"] == 0.9
    assert [p for g in opt.param_groups for p in g["params"]] == params


def test_bad_recipes_are_one_user_error() -> None:
    with pytest.raises(UserError, match=r"task\.optimizer must be one of adam, adamw, adafactor"):
        build_recipe({"optimizer": {"momentum": 0.9}})
    with pytest.raises(UserError, match=r"task\.optimizer must be one of adam, adamw, adafactor"):
        Recipe(optimizer="sgd")
    with pytest.raises(UserError, match=r"task\.warmup_fraction must be in \[0, 1\)"):
        Recipe(warmup_fraction=1.0)
