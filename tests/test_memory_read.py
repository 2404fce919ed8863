"""The published dense read, against the formula worked out position by position."""
import math

import numpy as np
import torch

from models.memory_read import read_memory_dense


def test_dense_read_is_a_softmax_over_every_memory_position():
    g = torch.Generator().manual_seed(0)
    n, key_dim, value_dim, frames, height, width = 2, 4, 3, 2, 2, 3
    keys = torch.randn(n, key_dim, frames, height, width, generator=g, dtype=torch.float64)
    values = torch.randn(n, value_dim, frames, height, width, generator=g, dtype=torch.float64)
    query_key = torch.randn(n, key_dim, height, width, generator=g, dtype=torch.float64)
    query_value = torch.randn(n, value_dim, height, width, generator=g, dtype=torch.float64)
    keys[:, :, 0, 0, 0] = 0       # an out-of-region memory position: score 0, value 0
    values[:, :, 0, 0, 0] = 0
    query_key[:, :, 1, 2] = 0     # an out-of-region query position: the plain average
    out = read_memory_dense(keys, values, query_key, query_value).numpy()
    mk = keys.numpy().reshape(n, key_dim, -1)
    mv = values.numpy().reshape(n, value_dim, -1)
    qk = query_key.numpy().reshape(n, key_dim, -1)
    for i in range(n):
        for q in range(height * width):
            scores = np.array([mk[i, :, p] @ qk[i, :, q] for p in range(mk.shape[2])]) / math.sqrt(key_dim)
            weights = np.exp(scores - scores.max())
            expected = mv[i] @ (weights / weights.sum())
            assert np.allclose(out[i, :value_dim].reshape(value_dim, -1)[:, q], expected)
        assert np.allclose(out[i, :value_dim, 1, 2], mv[i].mean(axis=1))
    assert np.array_equal(out[:, value_dim:], query_value.numpy())
