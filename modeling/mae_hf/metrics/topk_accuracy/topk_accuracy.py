"""Top-k accuracy (top-1 and top-5 by default) from ranked class predictions, as an ``evaluate`` module."""

import datasets
import evaluate

_DESCRIPTION = """
Top-k accuracy: the fraction of examples whose label is among the k highest-scoring classes.
`predictions` are class indices ranked by score (highest first, at least max(k) of them, or fewer when there are
fewer classes); `references` are the true class indices. Returns `top{k}` for every requested k.
"""

_INPUTS = """
Args:
    predictions (list of list of int): ranked class indices per example.
    references (list of int): true class index per example.
    k (list of int, optional): the cut-offs, default [1, 5].
Returns:
    dict: {"top1": float, "top5": float, ...}, each in [0, 1].
Example:
    >>> metric = evaluate.load("topk_accuracy.py")
    >>> metric.compute(predictions=[[2, 0, 1], [0, 1, 2]], references=[0, 1], k=[1, 2])
    {'top1': 0.0, 'top2': 1.0}
"""


class TopkAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k=(1, 5)):
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        if not references:
            raise ValueError("top-k accuracy of an empty set is undefined")
        results = {}
        for cutoff in k:
            hits = sum(int(label in ranked[:cutoff]) for ranked, label in zip(predictions, references))
            results[f"top{cutoff}"] = hits / len(references)
        return results
