"""Diffusion-generated modality graphs (DASRec, DiffMM): per-modality denoisers over users' interaction rows,
their training objectives, the modality attention, the rules that turn denoised rows into graph edges, and
diagnostics of how well the denoisers reconstruct users' rows."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lit_mmrec.models.components.diffusion import GaussianDiffusion, MLPDenoiser, fast_reverse, linear_noise_schedule
from lit_mmrec.models.components.precision import ProductPrecision
from lit_mmrec.models.components.propagation import csr_rows, dense_rows, entry_rows

ThresholdOn = Literal["similarity", "prediction"]
SparsityReference = Literal["n_items", "max_degree"]
AttentionActivation = Literal["tanh", "sigmoid"]
SignalFeatures = Literal["projected", "normalised"]


def centred_unit_rows(features: torch.Tensor, centre: bool = True) -> torch.Tensor:
    """``normalize(f_i - mean_j f_j)`` [n, d]: unit rows after removing the direction every row shares.

    Raw modality features are anisotropic (TikTok's image features have pairwise cosines 0.78-0.92), so
    without centring every cosine is close to the same large value and a threshold cannot tell items
    apart; centred, a user's preference ``sum_i alpha_hat_ui e_i`` is also unchanged by a constant offset
    of the denoised row (the centred rows sum to zero). ``centre=False`` only normalises.
    """
    if centre:
        features = features - features.mean(dim=0, keepdim=True)
    return F.normalize(features, dim=1)


def candidate_similarity(preferences: torch.Tensor, candidates: torch.Tensor, item_features: torch.Tensor
                         ) -> torch.Tensor:
    """Cosine [B, k] between each user's preference [B, d] and the unit features [n_items, d] of the
    user's candidate items [B, k]."""
    unit = F.normalize(preferences, dim=1)  # [B, d]
    return torch.bmm(item_features[candidates], unit.unsqueeze(-1)).squeeze(-1)


def own_item_ranks(scores: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rank (1 = the highest score) of every observed item in its user's row of ``scores`` [B, n];
    ``rows`` is the sparse CSR [B, n] of observed items. Returns one rank per stored entry of ``rows``,
    in CSR order. Ties rank as the best of them (1 + the number of strictly larger scores)."""
    crow, col = rows.crow_indices(), rows.col_indices()
    degree = crow.diff()
    if col.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    owner = entry_rows(rows)
    position = torch.arange(col.numel(), device=crow.device) - crow[:-1][owner]
    # each user's observed scores in a [B, max_degree] block, padded with -inf (ranked last, then dropped)
    observed = scores.new_full((scores.shape[0], int(degree.max())), float("-inf"))
    observed[owner, position] = scores[owner, col]
    ascending = scores.sort(dim=1).values
    larger = scores.shape[1] - torch.searchsorted(ascending, observed, right=True)  # [B, max_degree]
    return larger[owner, position] + 1


def user_median_ranks(ranks: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Each user's (lower) median of ``ranks`` [nnz] given in the CSR order of ``rows``, for the users
    with at least one stored entry [n_users_with_entries]."""
    crow = rows.crow_indices()
    degree = crow.diff()
    owner = entry_rows(rows)
    ordered = ranks[torch.argsort(owner * (int(ranks.max()) + 1 if ranks.numel() else 1) + ranks)]
    has = degree > 0
    return ordered[crow[:-1][has] + (degree[has] - 1) // 2]


def denoised_row_quality(scores: torch.Tensor, rows: torch.Tensor, similar: float = 0.9) -> dict[str, float]:
    """How well denoised rows ``scores`` [B, n] reconstruct the users' observed rows ``rows`` (CSR [B, n]).

    * ``own_item_rank``: the median over users of each user's median rank of their observed items in their
      denoised row (1 = first; a denoiser that has learnt nothing ranks them around n / 2). Every user
      counts once, however many items they hold (on TikTok 103 users hold 71% of the training pairs);
    * ``mean_row_share``: the share of users whose denoised row has cosine > ``similar`` with the mean
      denoised row (near 1 when the denoiser predicts one row for everybody).
    """
    ranks = user_median_ranks(own_item_ranks(scores, rows), rows)
    mean_row = F.normalize(scores.mean(dim=0), dim=0)
    cosine = F.normalize(scores, dim=1) @ mean_row
    return {
        "own_item_rank": float(ranks.float().median()) if ranks.numel() else float("nan"),
        "mean_row_share": float((cosine > similar).float().mean()),
    }


class ModalityAttention(nn.Module):
    """Per-user modality weights (eq 18): ``a_u^m = mean_h softmax_m(w_h^T sigma(W_h z_u^m + b_h))``.

    ``heads`` independent scoring heads, each a one-hidden-layer network of width ``hidden_dim``;
    each head's weights are a softmax over the M modalities, and the heads are averaged, so the
    weights of a user always sum to one.
    """

    def __init__(self, dim: int, heads: int = 4, hidden_dim: int = 64, activation: AttentionActivation = "tanh"
                 ) -> None:
        super().__init__()
        if heads < 1:
            raise ValueError(f"attention needs at least one head, got {heads}")
        self.heads, self.hidden_dim = heads, hidden_dim
        self.project = nn.Linear(dim, heads * hidden_dim)
        self.score = nn.Parameter(torch.empty(heads, hidden_dim))
        nn.init.xavier_uniform_(self.project.weight)
        nn.init.zeros_(self.project.bias)
        nn.init.xavier_uniform_(self.score)
        self.activation = torch.tanh if activation == "tanh" else torch.sigmoid

    def forward(self, preferences: torch.Tensor) -> torch.Tensor:
        """Weights [B, M] from per-modality preferences ``z`` [B, M, d]."""
        batch, modalities, _ = preferences.shape
        hidden = self.activation(self.project(preferences)).view(batch, modalities, self.heads, self.hidden_dim)
        logits = (hidden * self.score).sum(dim=-1)  # [B, M, H]
        return logits.softmax(dim=1).mean(dim=2)


def diffusion_plan(n_users: int, n_batches: int, batch_size: int | None, seed: int, epoch: int, rank: int = 0,
                   world_size: int = 1, device: torch.device | str = "cpu") -> dict[int, torch.Tensor]:
    """Which users' rows each training step of an epoch diffuses: batch index -> user ids.

    Every process takes its share (``rank::world_size``) of one permutation of the users drawn from
    ``seed`` and ``epoch`` (the same on every process), split into chunks of equal size (within one):
    with ``batch_size`` None one chunk per batch (fewer chunks, cycled over the batches, when there are
    fewer users than batches), else ``ceil(share / batch_size)`` chunks placed on evenly spaced batches
    ``floor(c * n_batches / n_chunks)``. Every process gets the same number of chunks, on the same batches.
    """
    generator = torch.Generator().manual_seed(seed + 7919 * epoch)
    share = torch.randperm(n_users, generator=generator)[rank::world_size].to(device)
    n_batches = max(1, n_batches)
    per_process = math.ceil(n_users / world_size)
    if batch_size is None:
        chunks = torch.tensor_split(share, max(1, min(n_batches, per_process)))
        return {b: chunks[b % len(chunks)] for b in range(n_batches)}
    n_chunks = max(1, min(n_batches, math.ceil(per_process / batch_size)))
    return {c * n_batches // n_chunks: chunk for c, chunk in enumerate(torch.tensor_split(share, n_chunks))}


class ModalityGraphGenerator(nn.Module):
    """Per-modality interaction diffusion that generates a modality-aware user-item graph per modality
    (DASRec eq 2-23; DiffMM's ``Denoise`` and ``GaussianDiffusion`` with its graph rebuild).

    Owns the noise schedule, one x0-predicting MLP denoiser per modality, the optional modality attention,
    the rules that turn denoised rows into edges, and the edges of the last generation. The recommender
    that uses it passes in its training interactions (:meth:`set_interactions`) and, at each call, the item
    features of each modality ``Trans(f^m)`` (detached: the generator's losses train only the denoisers and
    the attention) and the item ID embeddings; it never sees how the graphs were made. Every argument is
    the DASRec argument of the same name (:class:`~lit_mmrec.models.DASRec` documents them; DiffMM fixes
    some), so there are no defaults here.
    """

    def __init__(self, n_users: int, n_items: int, modalities: list[str], embedding_dim: int, *,
                 sparsity_scaled_noise: bool, sparsity_reference: SparsityReference, diffusion_steps: int,
                 noise_scale: float, noise_min: float, noise_max: float, first_step_noise: float | None,
                 sampling_steps: int, reweight_steps: bool, denoiser_hidden: int, denoiser_time_dim: int,
                 denoiser_dropout: float, denoiser_precision: ProductPrecision, use_modality_attention: bool,
                 attention_heads: int, attention_hidden: int, attention_activation: AttentionActivation,
                 signal_features: SignalFeatures, fused_signal_injection: bool, similarity_threshold: float,
                 threshold_on: ThresholdOn, centre_similarity_features: bool, graph_top_k: int,
                 rebuild_batch_size: int, diagnostic_users: int) -> None:
        super().__init__()
        if not 0 <= sampling_steps <= diffusion_steps:
            raise ValueError(f"sampling_steps must be in 0..diffusion_steps ({diffusion_steps}), got {sampling_steps}")
        if graph_top_k < 1:
            raise ValueError(f"graph_top_k must be >= 1, got {graph_top_k}")
        if threshold_on not in ("similarity", "prediction"):
            raise ValueError(f"threshold_on must be 'similarity' or 'prediction', got {threshold_on!r}")
        if use_modality_attention and not fused_signal_injection:
            raise ValueError("use_modality_attention needs fused_signal_injection: the attention weights reach "
                             "the model only through the fused signal-injection term (eq 19-20)")
        self.n_users, self.n_items, self.modalities = n_users, n_items, list(modalities)
        self.sparsity_scaled_noise, self.sparsity_reference = sparsity_scaled_noise, sparsity_reference
        self.sampling_steps, self.reweight_steps = sampling_steps, reweight_steps
        self.denoiser_dropout, self.denoiser_precision = denoiser_dropout, denoiser_precision
        self.use_modality_attention = use_modality_attention
        self.signal_features, self.fused_signal_injection = signal_features, fused_signal_injection
        self.similarity_threshold, self.threshold_on = similarity_threshold, threshold_on
        self.centre_similarity_features = centre_similarity_features
        self.graph_top_k = min(graph_top_k, n_items)
        self.rebuild_batch_size, self.diagnostic_users = rebuild_batch_size, diagnostic_users
        self.diffusion = GaussianDiffusion(linear_noise_schedule(diffusion_steps, noise_scale, noise_min, noise_max,
                                                                 first_step_noise))
        self.denoisers = nn.ModuleDict({
            m: MLPDenoiser(n_items, denoiser_hidden, denoiser_time_dim, denoiser_dropout, precision=denoiser_precision)
            for m in self.modalities
        })
        if use_modality_attention:
            self.attention = ModalityAttention(embedding_dim, attention_heads, attention_hidden, attention_activation)
        self.train_interactions: torch.Tensor | None = None
        self.user_sparsity: torch.Tensor | None = None
        # of the last generation: edges [2, E] per modality, the largest score the threshold acted on, statistics
        self.edges: dict[str, torch.Tensor] | None = None
        self.peaks: dict[str, float] = {}
        self.stats: dict[str, dict[str, float]] = {}

    # ---- users' rows ----
    def set_interactions(self, train: torch.Tensor) -> None:
        """The training interactions (sparse CSR [n_users, n_items]) and each user's sparsity s_u (eq 3)."""
        self.train_interactions = train
        degree = train.crow_indices().diff().float()
        reference = float(self.n_items) if self.sparsity_reference == "n_items" else float(degree.max().clamp(min=1))
        self.user_sparsity = 1.0 - degree / reference  # [n_users]

    def user_rows(self, users: torch.Tensor) -> torch.Tensor:
        """Training-interaction rows alpha_0 [B, n_items] of ``users``, densified per batch."""
        return dense_rows(self.train_interactions, users)

    def row_scale(self, users: torch.Tensor) -> torch.Tensor | None:
        """s_u [B] scaling each user's noise (eq 6), or None for plain diffusion."""
        return self.user_sparsity[users] if self.sparsity_scaled_noise else None

    def user_blocks(self) -> Iterator[torch.Tensor]:
        """Consecutive blocks of ``rebuild_batch_size`` user ids covering every user."""
        device = self.user_sparsity.device
        for start in range(0, self.n_users, self.rebuild_batch_size):
            yield torch.arange(start, min(start + self.rebuild_batch_size, self.n_users), device=device)

    # ---- item features ----
    def signal_item_features(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """e^m of eq 17 and 20 from ``Trans(f^m)``: as given (``projected``) or row-normalised (``normalised``)."""
        if self.signal_features == "normalised":
            return {m: F.normalize(f, dim=1) for m, f in features.items()}
        return features

    def similarity_item_features(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The unit item features the similarity threshold compares users with: e^m of eq 21,
        ``Norm(Trans(f^m))``, centred first when ``centre_similarity_features``."""
        return {m: centred_unit_rows(f, self.centre_similarity_features) for m, f in features.items()}

    # ---- training objectives (eq 2-20) ----
    def attention_weights(self, preferences: torch.Tensor) -> torch.Tensor:
        """a_u [B, M] (eq 18) from per-modality preferences [B, M, d], or uniform 1/M without attention."""
        if self.use_modality_attention:
            return self.attention(preferences)
        batch, modalities, _ = preferences.shape
        return preferences.new_full((batch, modalities), 1.0 / modalities)

    def step_weights(self, t: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        """Per-row weights SNR(t - 1) - SNR(t), and 1 at t = 1 (eq 13 and 15; DiffMM's)."""
        terms = self.diffusion.step_terms(t, scale)
        snr_t = (terms.bar / terms.noise_bar).squeeze(-1)
        snr_prev = (terms.bar_prev / terms.noise_prev.clamp(min=1e-12)).squeeze(-1)
        return torch.where(t == 1, torch.ones_like(snr_t), snr_prev - snr_t)

    def losses(self, users: torch.Tensor, item_ids: torch.Tensor, features: dict[str, torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed x0 objective (eq 13-16) and signal-injection loss (eq 17-20) for a batch of users, given
        the item ID embeddings [n_items, d] and each modality's ``Trans(f^m)`` [n_items, d], both detached."""
        rows = csr_rows(self.train_interactions, users)  # alpha_0, sparse [B, n_items]
        x0 = rows.to_dense()  # [B, n_items]
        scale = self.row_scale(users)
        structure = torch.sparse.mm(rows, item_ids)  # alpha_0 E_id [B, d], from the sparse rows
        signal = self.signal_item_features(features)
        t = torch.randint(1, self.diffusion.steps + 1, (len(users),), device=x0.device)
        # one draw per row shared by the modalities, DiffMM's input dropout (also shared) applied to it
        x_t = self.diffusion.q_sample_rows(rows, t, row_scale=scale,
                                           dropout=self.denoiser_dropout if self.training else 0.0)
        diffusion_loss = x0.new_zeros(())
        signal_loss = x0.new_zeros(())
        preferences = []
        for modality in self.modalities:
            x0_hat = self.denoisers[modality](x_t, t, input_dropout=False)
            per_row = (x0_hat - x0).pow(2).mean(dim=1)
            if self.reweight_steps:
                per_row = per_row * self.step_weights(t, scale)
            diffusion_loss = diffusion_loss + per_row.mean()
            preference = x0_hat @ signal[modality]  # z_u^m, eq 17 [B, d]
            signal_loss = signal_loss + (preference - structure).pow(2).mean()  # eq 20
            preferences.append(preference)
        if self.fused_signal_injection:
            stacked = torch.stack(preferences, dim=1)  # [B, M, d]
            weights = self.attention_weights(stacked)  # [B, M]
            fused = (weights.unsqueeze(-1) * stacked).sum(dim=1)  # eq 19
            signal_loss = signal_loss + (fused - structure).pow(2).mean()
        return diffusion_loss, signal_loss

    # ---- generation ----
    @torch.no_grad()
    def denoise_users(self, modality: str, users: torch.Tensor) -> torch.Tensor:
        """Denoised rows alpha_hat_0 [B, n_items] of ``users``, as graph generation computes them: the
        modality's denoiser (in eval mode) run by the reverse process from the clean row (DiffMM's
        ``sampling_steps = 0``) or from the row noised to ``sampling_steps``."""
        denoiser = self.denoisers[modality]
        was_training = denoiser.training
        denoiser.eval()
        try:
            scale = self.row_scale(users)
            if self.sampling_steps > 0:
                t = torch.full((len(users),), self.sampling_steps, dtype=torch.long, device=users.device)
                x_start = self.diffusion.q_sample(self.user_rows(users), t, row_scale=scale)
            else:  # the clean rows, kept sparse: the first product costs nnz x H, not B x n_items x H
                x_start = csr_rows(self.train_interactions, users)
            return fast_reverse(self.diffusion, denoiser, x_start, self.diffusion.steps, scale)
        finally:
            denoiser.train(was_training)

    def fused_preferences(self, denoised: dict[str, torch.Tensor], signal: dict[str, torch.Tensor],
                          similarity: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """z_u [B, d] per modality m (eq 17-19): the users' attention-fused denoised rows
        ``sum_m' a_u^m' alpha_hat^m'`` embedded with modality m's ``similarity`` features, so that each G^m
        compares users and items in one feature space. The attention weights a_u are those signal
        injection computes, from the per-modality preferences ``alpha_hat^m e^m`` (``signal`` features)."""
        stacked = torch.stack([denoised[m] @ signal[m] for m in self.modalities], dim=1)
        weights = self.attention_weights(stacked)  # [B, M]
        fused_rows = sum(weights[:, j: j + 1] * denoised[m] for j, m in enumerate(self.modalities))  # [B, n_items]
        return {m: fused_rows @ similarity[m] for m in self.modalities}

    @torch.no_grad()
    def candidate_scores(self, features: dict[str, torch.Tensor]
                         ) -> Iterator[tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]]:
        """``(users, {modality: (items, scores)})`` for every block of users: each user's ``graph_top_k``
        highest denoised items per modality [B, k] and the scores [B, k] the threshold acts on, the cosine
        between the user's fused preference z_u and the item's features e^m (``threshold_on: similarity``)
        or the denoised value (``prediction``). ``features``: each modality's ``Trans(f^m)``."""
        by_similarity = self.threshold_on == "similarity"
        signal = self.signal_item_features(features)
        similarity = self.similarity_item_features(features) if by_similarity else {}
        for users in self.user_blocks():
            denoised = {m: self.denoise_users(m, users) for m in self.modalities}
            fused = self.fused_preferences(denoised, signal, similarity) if by_similarity else {}
            block = {}
            for modality in self.modalities:
                values, items = denoised[modality].topk(self.graph_top_k, dim=1)  # [B, k]
                block[modality] = (items, candidate_similarity(fused[modality], items, similarity[modality])
                                   if by_similarity else values)
            yield users, block

    @torch.no_grad()
    def generate(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Generates, stores in ``edges`` and returns the edges [2, E] (users; items) of each modality graph:
        the candidates of :meth:`candidate_scores` whose score reaches ``similarity_threshold``. Also fills
        ``peaks`` and ``stats`` (edges, users with an edge, score quantiles, distinct candidates, and the
        denoiser diagnostics of :meth:`diagnostics`)."""
        # every block's results go into tensors allocated before the first block, so that nothing a block
        # keeps lands in the holes its temporaries leave: each block then reuses the same heap blocks (under
        # keep_freed_memory_for_reuse, results kept per block grew the heap by 0.2 GB a block at Electronics)
        device = self.user_sparsity.device
        shape = (self.n_users, self.graph_top_k)
        items = {m: torch.empty(shape, dtype=torch.long, device=device) for m in self.modalities}
        scores = {m: torch.empty(shape, device=device) for m in self.modalities}
        for users, block in self.candidate_scores(features):
            for modality, (block_items, block_scores) in block.items():
                items[modality].index_copy_(0, users, block_items)
                scores[modality].index_copy_(0, users, block_scores.to(scores[modality].dtype))
        edges, candidates = {}, {}
        for modality in self.modalities:
            users, slots = (scores[modality] >= self.similarity_threshold).nonzero(as_tuple=True)
            edges[modality] = torch.stack([users, items[modality][users, slots]])
            candidates[modality] = torch.zeros(self.n_items, dtype=torch.bool, device=device)
            candidates[modality][items[modality].flatten()] = True
        self.stats = {}
        for modality, (users, _) in edges.items():
            score = scores[modality].flatten()
            q10, q50, q90 = score.quantile(score.new_tensor([0.1, 0.5, 0.9])).tolist()
            self.peaks[modality] = float(score.max())
            self.stats[modality] = {
                "graph_edges": float(users.numel()),
                "graph_users": float(torch.unique(users).numel()),
                "graph_score_q10": q10, "graph_score_q50": q50, "graph_score_q90": q90,
                "candidate_items": float(candidates[modality].sum()),
                **self.diagnostics(modality),
            }
        self.edges = edges
        return edges

    @torch.no_grad()
    def diagnostics(self, modality: str) -> dict[str, float]:
        """:func:`denoised_row_quality` of the modality's denoiser over a fixed random sample of
        ``diagnostic_users`` users (the same sample at every rebuild); empty when ``diagnostic_users`` is 0."""
        if self.diagnostic_users <= 0:
            return {}
        sample = torch.randperm(self.n_users, generator=torch.Generator().manual_seed(0))[: self.diagnostic_users]
        sample = sample.sort().values.to(self.user_sparsity.device)
        quality = denoised_row_quality(self.denoise_users(modality, sample), csr_rows(self.train_interactions, sample))
        return {"denoiser_own_item_rank": quality["own_item_rank"],
                "denoiser_mean_row_share": quality["mean_row_share"]}
