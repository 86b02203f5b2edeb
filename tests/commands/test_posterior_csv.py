"""``almond sample``'s per-row CSV takes the likelihood's per-row columns from its declaration (``row_columns``)."""

from __future__ import annotations

import torch

from almond_cli.commands.sample import posterior_csv
from almond_cli.data.dataset import Dataset
from almond_cli.model.likelihoods import Gaussian, HeteroscedasticGaussian


def _stats(n):
    mean = torch.tensor([[0.25], [1.5]])[:n]
    return {"mean": mean, "sd": mean / 10, "lower": mean - 1, "upper": mean + 1}


def test_the_sd_row_column_is_written_under_its_name_after_the_observations():
    dataset = Dataset(
        x=torch.tensor([[0.5, 1.0], [2.0, 0.25]]),
        name="file",
        row_labels=[2, 3],
        column_names=["estimate"],
        ids=["a", "b"],
        id_name="unit",
    )
    text = posterior_csv(dataset, HeteroscedasticGaussian(), _stats(2), 0.95)
    assert text == (
        "row,unit,estimate,sd,post_mean,post_sd,q2.5,q97.5\n"
        "2,a,0.5,1,0.25,0.025,-0.75,1.25\n"
        "3,b,2,0.25,1.5,0.15,0.5,2.5\n"
    )


def test_a_likelihood_without_row_columns_writes_the_observations_alone():
    dataset = Dataset(x=torch.tensor([[0.5], [2.0]]), name="normal_means", truth=torch.tensor([[0.0], [1.0]]))
    text = posterior_csv(dataset, Gaussian(1.0), _stats(2), 0.9)
    assert text.splitlines() == [
        "row,x,truth,post_mean,post_sd,q5,q95",
        "0,0.5,0,0.25,0.025,-0.75,1.25",
        "1,2,1,1.5,0.15,0.5,2.5",
    ]
