"""SASRec, DEALRec's surrogate recommender, in plain PyTorch (no RecBole), and its training loop.

Public entry: :func:`train_sasrec` (fit on a :class:`~goracs.features.sequences.SequenceData`) and :class:`SASRec`.
The model follows DEALRec ``code/prune/{models,modules,trainers}.py``: item + learned position embeddings, LayerNorm
(ε = 1e-12, inside the square root), dropout; ``num_layers`` blocks of multi-head causal self-attention (output
projection ``attention.dense``, dropout, residual, LayerNorm) and a point-wise feed-forward
``act(W₂ act(W₁ x))`` (the official code applies the activation after both layers, and hard-codes ``nn.ReLU``:
its ``--hidden_act gelu`` argument is parsed but never used), dropout, residual, LayerNorm. Weights ~ N(0, 0.02²),
biases 0. Scores are dot products with the (tied) item embeddings.

Loss (official ``cross_entropy``), for sequence outputs o_t, positive p_t, sampled negative n_t and target mask m_t:

    L = Σ_t m_t · [−log(σ(o_t·e_{p_t}) + 1e-24) − log(1 − σ(o_t·e_{n_t}) + 1e-24)] / (Σ_t m_t + 1e-24)

summed over the batch's positions (so a batch loss is the mean over its transitions, not over its sequences).
Parameter names mirror the official module tree, so the matrix DEALRec restricts its influence to is
``item_encoder.layer.1.attention.dense.weight`` here too.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from goracs.features.sequences import SequenceData, sample_negatives

log = logging.getLogger(__name__)

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
VALID_K = 5  # the official "best" criterion: Recall@topN[0], topN = [5, 10, 20, 50]
MASK_VALUE = -10000.0  # official additive attention mask; finite, so fully padded rows stay NaN-free


@dataclass
class TrainLog:
    """What training did: mean loss per epoch, validation Recall@5 per evaluated epoch, the epoch kept, seconds."""

    losses: list[float] = field(default_factory=list)
    valid: dict[int, float] = field(default_factory=dict)
    kept_epoch: int = 0
    seconds: float = 0.0


class SASRec(nn.Module):
    """Self-attentive sequential recommender (Kang & McAuley, 2018) as coded in DEALRec; see the module docstring."""

    def __init__(self, n_items: int, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 2,
                 dropout: float = 0.5, max_len: int = 50, activation: str = "relu", init_std: float = 0.02):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"features.surrogate.hidden_size={hidden_size} is not a multiple of num_heads={num_heads}")
        self.max_len = max_len
        self.item_embeddings = nn.Embedding(n_items + 1, hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(max_len, hidden_size)
        self.LayerNorm = LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.item_encoder = nn.Module()
        self.item_encoder.layer = nn.ModuleList(
            [Block(hidden_size, num_heads, dropout, ACTIVATIONS[activation]) for _ in range(num_layers)])
        self.apply(lambda m: _init(m, init_std))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, T) item ids, left-padded with 0 -> (B, T, hidden) outputs; T <= max_len, last item at max_len - 1."""
        t = inputs.shape[-1]
        positions = torch.arange(self.max_len - t, self.max_len, device=inputs.device)
        x = self.dropout(self.LayerNorm(self.item_embeddings(inputs) + self.position_embeddings(positions)))
        keep = (inputs > 0)[..., None, None, :] & torch.ones(t, t, dtype=torch.bool, device=inputs.device).tril()
        mask = (~keep).to(x.dtype) * MASK_VALUE  # (B, 1, T, T): key padding and causality, added to the logits
        for block in self.item_encoder.layer:
            x = block(x, mask)
        return x

    def loss(self, inputs: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """The official BCE with one negative per position, averaged over the batch's target positions."""
        return bce_loss(self, self(inputs), pos, neg)

    def scores(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, n_items + 1) dot-product scores of every item id (0 = padding) after the last input position."""
        return self(inputs)[:, -1] @ self.item_embeddings.weight.T


def train_sasrec(model: SASRec, train: SequenceData, *, epochs: int, batch_size: int, lr: float,
                 weight_decay: float, seed: int, checkpoint: str = "last", valid: SequenceData | None = None,
                 eval_every: int = 5, device: str = "cpu") -> TrainLog:
    """Fit ``model`` in place with Adam (β = 0.9, 0.999) on shuffled batches, fresh negatives every epoch (as the
    official dataset redraws them on every access), dropout on.

    ``checkpoint="last"`` keeps the final weights: the official code saves every ``eval_every`` epochs outside its
    "if best" block, so its pruning loads the last save (the same weights when ``epochs`` is a multiple of
    ``eval_every``). ``"best"`` keeps the weights of the evaluated epoch with the highest validation Recall@5 on
    ``valid`` (the behaviour the official comment intends). Randomness (init is the caller's; order, negatives,
    dropout) comes from ``seed`` only; the global RNG state is restored afterwards.
    """
    if train.n_positions == 0:
        raise ValueError("the surrogate has no training transitions")
    start = time.perf_counter()
    record = TrainLog()
    rng = np.random.default_rng(seed)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)
    inputs = torch.as_tensor(train.inputs, device=device)
    pos = torch.as_tensor(train.targets, device=device)
    best, best_state = -math.inf, None
    with torch.random.fork_rng(devices=[] if device == "cpu" else [torch.device(device)]):
        torch.manual_seed(seed)
        for epoch in tqdm(range(1, epochs + 1), desc="surrogate/epochs", leave=False):
            model.train()
            neg = torch.as_tensor(sample_negatives(train, rng), device=device)
            order = torch.as_tensor(rng.permutation(len(train)), device=device)
            total, batches = 0.0, 0
            for chunk in order.split(batch_size):
                loss = model.loss(inputs[chunk], pos[chunk], neg[chunk])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, batches = total + loss.detach().item(), batches + 1
            record.losses.append(total / batches)
            if checkpoint == "best" and valid is not None and epoch % eval_every == 0:
                record.valid[epoch] = recall_at_k(model, valid, VALID_K, device=device)
                if record.valid[epoch] > best:
                    best, best_state, record.kept_epoch = record.valid[epoch], copy.deepcopy(model.state_dict()), epoch
                log.info("surrogate epoch %d: loss %.4f, valid recall@%d %.4f", epoch, record.losses[-1], VALID_K,
                         record.valid[epoch])
            elif epoch % eval_every == 0:
                log.info("surrogate epoch %d: loss %.4f", epoch, record.losses[-1])
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        record.kept_epoch = epochs
    model.eval()
    record.seconds = time.perf_counter() - start
    return record


@torch.no_grad()
def recall_at_k(model: SASRec, data: SequenceData, k: int, *, device: str = "cpu", batch_size: int = 1024) -> float:
    """Share of rows whose target (the last position's) ranks in the top ``k`` of all items, the row's own items
    and the padding id excluded (the official code sets seen items to score 0 rather than excluding them)."""
    model.eval()
    rows = np.flatnonzero(data.targets[:, -1] > 0)
    if len(rows) == 0:
        return 0.0
    hits = 0
    for chunk in np.array_split(rows, max(1, math.ceil(len(rows) / batch_size))):
        scores = model.scores(torch.as_tensor(data.inputs[chunk], device=device))
        target = torch.as_tensor(data.targets[chunk, -1], device=device)
        seen = torch.as_tensor(data.inputs[chunk], device=device)
        target_score = scores.gather(1, target[:, None])
        scores.scatter_(1, seen, -math.inf)
        scores[:, 0] = -math.inf
        hits += int(((scores > target_score).sum(1) < k).sum())
    return hits / len(rows)


def bce_loss(model: SASRec, out: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """The official BCE (module docstring) on sequence outputs ``out`` (B, T, hidden); pos/neg (B, T), 0 = none."""
    m = (pos > 0).to(out.dtype)
    pos_logit = (out * model.item_embeddings(pos)).sum(-1)
    neg_logit = (out * model.item_embeddings(neg)).sum(-1)
    per_pos = -torch.log(torch.sigmoid(pos_logit) + 1e-24) - torch.log(1 - torch.sigmoid(neg_logit) + 1e-24)
    return (per_pos * m).sum() / (m.sum() + 1e-24)


class LayerNorm(nn.Module):
    """TF-style LayerNorm, ε inside the square root (official ``modules.LayerNorm``)."""

    def __init__(self, hidden_size: int, eps: float = 1e-12):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(-1, keepdim=True)
        s = (x - u).pow(2).mean(-1, keepdim=True)
        return self.weight * (x - u) / torch.sqrt(s + self.eps) + self.bias


class Block(nn.Module):
    """One transformer block: ``attention`` then ``intermediate`` (official ``modules.Layer``)."""

    def __init__(self, hidden: int, heads: int, dropout: float, activation: type[nn.Module]):
        super().__init__()
        self.attention = SelfAttention(hidden, heads, dropout)
        self.intermediate = FeedForward(hidden, dropout, activation)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.intermediate(self.attention(x, mask))


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.head_size = heads, hidden // heads
        self.query, self.key, self.value = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden,
                                                                                                             hidden)
        self.attn_dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = LayerNorm(hidden)
        self.out_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        def split(y: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, heads, T, head_size)
            return y.view(*y.shape[:-1], self.heads, self.head_size).transpose(-3, -2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.head_size) + mask
        context = self.attn_dropout(torch.softmax(logits, dim=-1)) @ v
        context = context.transpose(-3, -2).reshape(x.shape)
        return self.LayerNorm(self.out_dropout(self.dense(context)) + x)


class FeedForward(nn.Module):
    def __init__(self, hidden: int, dropout: float, activation: type[nn.Module]):
        super().__init__()
        self.conv1d_1, self.conv1d_2 = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)  # official kernel-1 Conv1d
        self.activation = activation()
        self.LayerNorm = LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.activation(self.conv1d_2(self.activation(self.conv1d_1(x))))
        return self.LayerNorm(self.dropout(h) + x)


def _init(module: nn.Module, std: float) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
