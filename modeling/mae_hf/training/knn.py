"""Online kNN monitor: top-1 accuracy of a weighted k-nearest-neighbour vote (cosine similarity) on frozen
encoder features, so representation quality can be watched during pre-training without a separate run."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader


@torch.no_grad()
def extract_features(encoder, loader: DataLoader, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised mean-pooled patch features (no masking) and labels of every batch of ``loader``."""
    was_training = encoder.training
    encoder.eval()
    features, labels = [], []
    try:
        for batch in loader:
            outputs = encoder(pixel_values=batch["pixel_values"].to(device), mask_ratio=0.0)
            features.append(F.normalize(outputs.pooler_output.float(), dim=-1).cpu())
            labels.append(batch["labels"].cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(features), torch.cat(labels)


def knn_top1(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    query_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy of the similarity-weighted vote (weights exp(cos / T), as InstDisc / DINO) of the k nearest
    training features by cosine similarity. Features must be L2-normalised."""
    train_features, query_features = train_features.float(), query_features.float()
    k = min(k, train_features.shape[0])
    num_classes = int(max(train_labels.max(), query_labels.max())) + 1
    correct = 0
    for start in range(0, query_features.shape[0], chunk_size):
        queries = query_features[start : start + chunk_size]
        similarity, indices = (queries @ train_features.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        votes = torch.zeros(queries.shape[0], num_classes)
        votes.scatter_add_(1, train_labels[indices], weights)
        correct += (votes.argmax(dim=1) == query_labels[start : start + chunk_size]).sum().item()
    return correct / query_features.shape[0]


def knn_accuracy(
    encoder,
    train_loader: DataLoader,
    query_loader: DataLoader,
    device: torch.device | str,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Encode both sets with ``encoder`` (an ``MAEModel``) and return the kNN top-1 accuracy on the queries."""
    train_features, train_labels = extract_features(encoder, train_loader, device)
    query_features, query_labels = extract_features(encoder, query_loader, device)
    return knn_top1(train_features, train_labels, query_features, query_labels, k, temperature)


__all__ = ["extract_features", "knn_accuracy", "knn_top1"]
