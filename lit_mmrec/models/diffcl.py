"""DiffCL (Song et al.): diffusion-generated contrastive views, item-item KNN enhancement, ID-guided alignment."""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lit_mmrec.models.base import RecommenderModule, user_item_table
from lit_mmrec.models.components import (
    LayerCombination,
    combine_layers,
    gather_rows,
    info_nce,
    l2_regularisation,
    propagate,
    propagate_rows,
    sparse_matmul,
    squared_norm,
)
from lit_mmrec.models.components.diffusion import (
    GaussianDiffusion,
    MLPDenoiser,
    linear_noise_schedule,
)
from lit_mmrec.models.components.precision import ProductPrecision, compute_dtype, warn_if_emulated

UserModalityInput = Literal["aggregate", "learned", "id"]
ViewGenerator = Literal["denoised", "perturbed"]


class DiffCL(RecommenderModule):
    """DiffCL for any number (>= 1) of item modalities; equation numbers are the paper's.

    Representations
        * **Graph encoder** (eq 3-4): one LightGCN propagation over ``D^-1/2 A D^-1/2`` for the ID
          embeddings and one per modality, layer outputs combined by ``layer_combination`` (the paper
          sums, eq 4). Item inputs of modality m are the raw features through ``Linear(d_m, d)``.
        * **Item-item enhancement** (eq 18-23): ``item_item_layers`` aggregations of the projected item
          features over the data module's normalised top-K KNN graph of modality m, added to the item
          part of E_m (eq 23). The graphs come from the data module (never rebuilt here).
        * **Fusion** (eq 24): ``E_f = mu E_1 + (1 - mu) E_2`` with a trainable mu initialised at 0.5 for
          two modalities; for one modality E_f = E_1; for M > 2, softmax weights over M trainable
          logits (initially uniform) -- a generalisation the paper does not cover.
        * **Score** (eq 30): ``e_f^u . e_f^i + e_id^u . e_id^i`` (``forward`` concatenates [E_f, E_id]).

    Losses (eq 32): ``BPR + L_cl + L_align + L_E`` plus the denoiser's own objective, where
        * ``L_cl = lambda_cl * sum_m (L_u^m + L_i^m)`` (eq 13-17): two views of E_m, each the graph
          encoder output noised to step ``view_step`` (eq 10-11) then denoised by the learnt reverse
          process (eq 12); InfoNCE with cosine similarity and temperature ``tau``;
        * ``L_align = lambda_align * sum_m (|mu_id - mu_m| + |sigma_id - sigma_m|)`` (eq 25-28);
        * ``L_E = lambda_e * sum_m ||E_m||^2`` (eq 33), taken as the mean squared entry of E_m over the
          batch's users and items, so the paper's lambda_E in [0.01, 1] is on the scale of the BPR loss;
        * ``L_diff = diffusion_weight * mean (x0_hat(x_t, t) - x0)^2`` (x0-prediction, t uniform in 1..T,
          target detached so the encoder is not pulled towards what the denoiser finds easy).

    Choices the paper leaves open (each a config option):
        * ``user_modality_input``: users' per-modality inputs. ``aggregate`` (default; MMRec's graph
          models such as LATTICE/FREEDOM/LGMRec) = the mean of the projected features of the user's
          training items, ``R_norm h_m``; ``learned`` = a free user embedding table per modality
          (MMGCN/DualGNN style; its batch rows get the same L2 ``reg_weight`` as the ID rows); ``id``
          = the user's ID embedding, shared by the ID graph and every modality graph (DiffMM's
          ``[E_u; normalize(h_m)]``; the paper's Fig. 2 draws the modality encoders' user side as ID
          embeddings). On TikTok ``learned`` validated best (docs/results.md).
        * Denoiser: DiffMM's MLP ``Linear(d + time_dim, hidden) -> tanh -> Linear(hidden, d)`` with a
          sinusoidal step embedding, one per modality; ``denoiser_dropout`` (the paper's dropout 0.5)
          applies to its input in the denoising objective and not in the reverse process that makes
          the views, as in DiffMM. ``diffusion_steps`` T = 5 and the view step ``view_step``
          (default T) are DiffMM's usual sizes; Sigma_theta is fixed to the posterior variance and the
          reverse process adds no noise unless ``sampling_noise`` (DiffMM).
        * ``denoiser_precision``: ``float32`` (default) or ``bfloat16``, the arithmetic of the denoisers'
          products (mixed precision inside the denoiser only: parameters, gradients, encoders, InfoNCE
          and scoring stay float32; :class:`MLPDenoiser`). Not in the paper; an engineering option for
          devices with bfloat16 matrix units, where the views' small products take about half the time.
          The TikTok experiment config sets it: over three seeds validation was as high as in float32
          (docs/results.md, TikTok, DiffCL).
        * ``contrastive_precision``: the same choice for L_cl's InfoNCE similarity products (forward and
          backward; the softmax and the loss stay float32; :func:`info_nce`). It pays from about 800
          rows on; TikTok's batches of 1,024 have about 400 unique users and 800 unique items.
        * ``views_train_denoiser``: whether L_cl's gradient reaches the denoiser's parameters. The paper
          only calls mu_theta / Sigma_theta learnable. ``true`` (default): L_cl trains the denoiser
          too, through both views' reverse chains. ``false``: DiffMM's arrangement, where the denoiser
          learns only from its own x0 objective; L_cl still reaches the encoder outputs through the
          views, and the views' backward skips the denoiser's weight gradients (a third of its products).
        * The InfoNCE denominators run over the unique users / positive items of the training batch
          (SGL/MMRec practice; all-pairs over every user does not scale), and the views of a batch use
          the current embeddings (gradients flow through both views and the denoiser).
        * Gaussian parameters in L_align are the per-dimension mean and standard deviation over the
          batch's users and items of the final ID and modality embeddings; |.| is the mean absolute
          difference over dimensions. ``align_to_fixed_id`` (default) makes the ID statistics the fixed
          target (no gradient into the ID embeddings): the paper aligns the modalities *guided by* the
          stable ID embeddings and warns against alignment that disrupts the interaction signal. With
          gradients both ways, on TikTok the ID embeddings are pulled up to the modality embeddings'
          scale within an epoch and the model overfits early (best validation Recall@20 0.086 at
          epoch 5, against 0.098 with the fixed target); ``false`` gives the symmetric loss.
        * Diffusion views use E_m before the item-item enhancement (the paper's section order).
        * ``view_generator``: ``denoised`` (the paper: forward noising to ``view_step``, then the learnt
          reverse process) or ``perturbed``, the control without the denoiser: the views are the noised
          ``x_{view_step}`` themselves, the same forward noising (plain Gaussian perturbation). Each epoch
          logs ``train/view_cosine`` (mean cosine between a row's two views) and ``train/view_input_cosine``
          (between a view and the row it came from), so what the views change is visible.
        * ``normalise_item_features``: L2-normalise each item's projected features (DiffMM's
          ``F.normalize(Trans(f))``). Off by default (MMRec's models project raw features); needed when
          raw features are large and uncentred, as TikTok's image features are (row norms ~33), which
          otherwise swamp the ID embeddings.

    Ablations (paper Table III): ``use_diffusion_cl``, ``use_alignment``, ``use_item_item`` switch the three
    components; a switched-off component contributes neither its loss term nor its effect on embeddings.

    Args:
        n_users: number of users (linked from the data module).
        n_items: number of items (linked from the data module).
        feature_dims: widths of the item feature modalities (linked from the data module).
        embedding_dim: width d of every embedding (ID, modality, fused).
        n_layers: LightGCN layers of the graph encoders (eq 3).
        layer_combination: how the encoder combines its layer outputs, ``sum`` (eq 4) or ``mean``.
        user_modality_input: users' per-modality inputs: ``aggregate``, ``learned`` or ``id`` (above).
        use_diffusion_cl: the diffusion-generated contrastive views and L_cl (Table III switch).
        use_alignment: the ID-guided alignment L_align (Table III switch).
        use_item_item: the item-item KNN enhancement (Table III switch).
        item_item_layers: aggregations over the KNN item graph (eq 22).
        lambda_cl: weight of L_cl.
        lambda_align: weight of L_align.
        lambda_e: weight of L_E, the embeddings' regulariser (eq 33).
        tau: InfoNCE temperature.
        diffusion_steps: diffusion steps T.
        view_step: the step the views are noised to before denoising (default T).
        noise_scale: scale s of the linear noise schedule.
        noise_min: smallest noise level of the schedule.
        noise_max: largest noise level of the schedule.
        denoiser_hidden: hidden width of each modality's MLP denoiser.
        denoiser_time_dim: width of the denoiser's sinusoidal step embedding.
        denoiser_dropout: dropout on the denoiser's input in its own objective.
        denoiser_precision: arithmetic of the denoisers' products, ``float32`` or ``bfloat16``.
        contrastive_precision: arithmetic of L_cl's similarity products, ``float32`` or ``bfloat16``.
        sampling_noise: add the posterior noise in the views' reverse process (DiffMM's option).
        diffusion_weight: weight of the denoiser's own x0 objective.
        views_train_denoiser: let L_cl's gradient reach the denoiser's parameters.
        view_generator: how the contrastive views are made, ``denoised`` (the paper) or ``perturbed``.
        normalise_item_features: L2-normalise each item's projected features.
        align_to_fixed_id: take the ID statistics in L_align as a fixed target (no gradient into IDs).
    """

    requires_features = True

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int] | None = None,
        embedding_dim: int = 64,
        n_layers: int = 2,
        layer_combination: LayerCombination = "sum",
        user_modality_input: UserModalityInput = "aggregate",
        use_diffusion_cl: bool = True,
        use_alignment: bool = True,
        use_item_item: bool = True,
        item_item_layers: int = 1,
        lambda_cl: float = 0.1,
        lambda_align: float = 0.4,
        lambda_e: float = 0.7,
        tau: float = 0.4,
        diffusion_steps: int = 5,
        view_step: int | None = None,
        noise_scale: float = 0.1,
        noise_min: float = 0.0001,
        noise_max: float = 0.02,
        denoiser_hidden: int = 256,
        denoiser_time_dim: int = 16,
        denoiser_dropout: float = 0.5,
        denoiser_precision: ProductPrecision = "float32",
        contrastive_precision: ProductPrecision = "float32",
        sampling_noise: bool = False,
        diffusion_weight: float = 1.0,
        views_train_denoiser: bool = True,
        view_generator: ViewGenerator = "denoised",
        normalise_item_features: bool = False,
        align_to_fixed_id: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(n_users, n_items, feature_dims=feature_dims, **kwargs)
        self.modalities = list(self.feature_dims)
        self.n_layers = n_layers
        self.layer_combination = layer_combination
        self.user_modality_input = user_modality_input
        self.use_diffusion_cl = use_diffusion_cl
        self.use_alignment = use_alignment
        self.use_item_item = use_item_item
        self.item_item_layers = item_item_layers
        self.lambda_cl, self.lambda_align, self.lambda_e, self.tau = lambda_cl, lambda_align, lambda_e, tau
        self.view_step = diffusion_steps if view_step is None else view_step
        if view_generator not in ("denoised", "perturbed"):
            raise ValueError(f"view_generator must be 'denoised' or 'perturbed', got {view_generator!r}")
        self.view_generator = view_generator
        self._view_cosines: dict[str, list[torch.Tensor]] = {}
        if not 1 <= self.view_step <= diffusion_steps:
            raise ValueError(f"view_step must be in 1..diffusion_steps ({diffusion_steps}), got {view_step}")
        self.sampling_noise = sampling_noise
        self.diffusion_weight = diffusion_weight
        self.views_train_denoiser = views_train_denoiser
        self.denoiser_precision = denoiser_precision
        compute_dtype(contrastive_precision, "contrastive_precision")  # fail at construction, not at the first step
        self.contrastive_precision = contrastive_precision
        self.normalise_item_features = normalise_item_features
        self.align_to_fixed_id = align_to_fixed_id

        self.id_embedding = user_item_table(n_users, n_items, embedding_dim)
        self.projections = nn.ModuleDict({m: nn.Linear(d, embedding_dim) for m, d in self.feature_dims.items()})
        for projection in self.projections.values():
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)
        if user_modality_input == "learned":
            self.user_modality = nn.ParameterDict(
                {m: nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_users, embedding_dim))) for m in self.modalities}
            )
        if len(self.modalities) == 2:
            self.fusion_mu = nn.Parameter(torch.tensor(0.5))
        elif len(self.modalities) > 2:
            self.fusion_logits = nn.Parameter(torch.zeros(len(self.modalities)))
        self.diffusion = GaussianDiffusion(linear_noise_schedule(diffusion_steps, noise_scale, noise_min, noise_max))
        self.denoisers = nn.ModuleDict({
            m: MLPDenoiser(embedding_dim, denoiser_hidden, denoiser_time_dim, denoiser_dropout,
                            precision=denoiser_precision) for m in self.modalities
        })

    # ---- graphs derived once per setup ----
    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._view_cosines = {}

    def on_train_epoch_end(self) -> None:
        """Also logs the epoch's mean view cosines (``view_generator`` in the class docstring)."""
        super().on_train_epoch_end()
        if self._view_cosines:
            self.log_dict({f"train/{name}": torch.stack(values).mean() for name, values in self._view_cosines.items()},
                          sync_dist=True)

    def on_graphs_ready(self) -> None:
        device = self.graphs.norm_adjacency.device
        warn_if_emulated(self.denoiser_precision, device)
        warn_if_emulated(self.contrastive_precision, device, "contrastive_precision")
        n_users = self.n_users
        # user -> item mean aggregation R_norm = D_u^-1 R, for users' aggregated modality inputs
        interactions = self.graphs.train_interactions.to_sparse_coo().coalesce()
        rows, cols = interactions.indices()
        degree = torch.bincount(rows, minlength=n_users).clamp(min=1).float()
        values = 1.0 / degree[rows]
        mean_rows = torch.sparse_coo_tensor(interactions.indices(), values, interactions.shape,
                                            check_invariants=False).coalesce()
        self.user_item_mean = mean_rows.to_sparse_csr()
        self.user_item_mean_t = mean_rows.t().coalesce().to_sparse_csr()
        self.item_item_t = {m: g.to_sparse_coo().t().coalesce().to_sparse_csr() for m, g in self.graphs.item_item.items()}

    # ---- representation pieces ----
    def _encode(self, embeddings: torch.Tensor) -> torch.Tensor:
        layers = propagate(self.graphs.norm_adjacency, embeddings, self.n_layers)
        return combine_layers(layers, self.layer_combination)

    def modality_item_features(self, modality: str) -> torch.Tensor:
        """Projected item features h_m [n_items, d], L2-normalised per item with ``normalise_item_features``."""
        projected = self.projections[modality](self.graphs.features[modality])
        return F.normalize(projected, dim=1) if self.normalise_item_features else projected

    def modality_inputs(self, modality: str, item_features: torch.Tensor) -> torch.Tensor:
        """E_m^(0) = [users; items] [n_users + n_items, d] for the graph encoder."""
        if self.user_modality_input == "learned":
            users = self.user_modality[modality]
        elif self.user_modality_input == "id":
            users = self.id_embedding[: self.n_users]
        else:
            users = sparse_matmul(self.user_item_mean, item_features, self.user_item_mean_t)
        return torch.cat([users, item_features], dim=0)

    def item_item_enhancement(self, modality: str, item_features: torch.Tensor,
                              item_rows: torch.Tensor | None = None) -> torch.Tensor:
        """A_m^(l): ``item_item_layers`` aggregations over the modality's KNN graph (eq 22), for every item
        [n_items, d] or, given ``item_rows``, for those items only [len(item_rows), d]."""
        graph, graph_t = self.graphs.item_item[modality], self.item_item_t[modality]
        if item_rows is None:
            return propagate(graph, item_features, self.item_item_layers, graph_t)[-1]
        return propagate_rows(graph, item_features, self.item_item_layers, item_rows, "last", graph_t)

    def fusion_weights(self) -> torch.Tensor:
        """Weights [M] of the modalities in E_f (eq 24)."""
        if len(self.modalities) == 1:
            return torch.ones(1, device=self.id_embedding.device)
        if len(self.modalities) == 2:
            return torch.stack([self.fusion_mu, 1 - self.fusion_mu])
        return torch.softmax(self.fusion_logits, dim=0)

    def encode_parts(self, rows: torch.Tensor | None = None, item_rows: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """E_id and the encoder outputs E_m [N, d], and the item-item enhancements [n_items, d] of each
        modality (``None`` with ``use_item_item`` off).

        Given ``rows`` (users-then-items indices) and ``item_rows`` (item indices), only those rows of
        the encoder outputs and of the enhancements (training steps: the losses read a batch's rows);
        the values are the full tables' rows, computed by :func:`propagate_rows` at a fraction of the cost.
        """
        inputs, enhancement = [self.id_embedding], {}
        for modality in self.modalities:
            item_features = self.modality_item_features(modality)
            inputs.append(self.modality_inputs(modality, item_features))
            if self.use_item_item:
                enhancement[modality] = self.item_item_enhancement(modality, item_features, item_rows)
        # the ID graph and every modality graph share the user-item adjacency: one sparse product over
        # the side-by-side columns [E_id | E_1 | ... | E_M] per layer instead of M + 1 narrow ones
        stacked = torch.cat(inputs, dim=1)
        if rows is None:
            encoded = self._encode(stacked)
        else:
            encoded = propagate_rows(self.graphs.norm_adjacency, stacked, self.n_layers, rows, self.layer_combination)
        outputs = encoded.split(self.id_embedding.shape[1], dim=1)
        encoded = dict(zip(self.modalities, outputs[1:]))
        return outputs[0], encoded, enhancement if self.use_item_item else None

    def encode_all(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """E_id, the encoder outputs E_m (before enhancement) and the final E_m (after), all [N, d]."""
        id_final, encoded, enhancement = self.encode_parts()
        if enhancement is None:
            return id_final, encoded, dict(encoded)
        final = {m: self.enhance_items(encoded[m], self.n_users, enhancement[m]) for m in self.modalities}
        return id_final, encoded, final

    @staticmethod
    def enhance_items(rows: torch.Tensor, n_user_rows: int, item_enhancement: torch.Tensor) -> torch.Tensor:
        """Eq 23 on ``rows`` of E_m ordered users first: the item rows (from ``n_user_rows`` on) plus their
        enhancement, the user rows as they are."""
        return torch.cat([rows[:n_user_rows], rows[n_user_rows:] + item_enhancement])

    def fuse(self, final: dict[str, torch.Tensor]) -> torch.Tensor:
        weights = self.fusion_weights()
        return sum(weight * final[m] for weight, m in zip(weights, self.modalities))

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        id_final, _, final = self.encode_all()
        combined = torch.cat([self.fuse(final), id_final], dim=1)  # [N, 2d]: score = fused dot + ID dot
        return combined[: self.n_users], combined[self.n_users :]

    def input_table(self) -> torch.Tensor:
        return self.id_embedding

    # ---- auxiliary objectives ----
    def diffusion_view(self, modality: str, x0: torch.Tensor) -> torch.Tensor:
        """One noise-then-denoise pass: x0 -> x_{view_step} -> reverse process -> view (eq 10-12)."""
        t = torch.full((x0.shape[0],), self.view_step, dtype=torch.long, device=x0.device)
        x_t = self.diffusion.q_sample(x0, t)
        if self.view_generator == "perturbed":
            return x_t
        denoiser = self.denoisers[modality]
        if not self.views_train_denoiser:
            denoiser = partial(denoiser, frozen=True)  # L_cl reaches the encoder through the views, not the denoiser
        return self.diffusion.reverse(denoiser, x_t, self.view_step, self.sampling_noise)

    def denoising_loss(self, modality: str, x0: torch.Tensor) -> torch.Tensor:
        """x0-prediction objective ``||x0_hat(x_t, t) - x0||^2``, t uniform in 1..T, target detached."""
        target = x0.detach()
        t = torch.randint(1, self.diffusion.steps + 1, (target.shape[0],), device=target.device)
        prediction = self.denoisers[modality](self.diffusion.q_sample(target, t), t)
        return (prediction - target).pow(2).mean()

    def contrastive_loss(self, x0: dict[str, torch.Tensor], n_users: int) -> torch.Tensor:
        """``sum_m (L_u^m + L_i^m)`` over two diffusion views of E_m (eq 13-16), unweighted; ``x0[m]`` holds
        the encoder outputs of the batch's unique users (first ``n_users`` rows) then unique items."""
        total = 0.0
        for modality in self.modalities:
            # both views in one pass: independent noise and dropout per row, half the operator calls
            view_a, view_b = self.diffusion_view(modality, x0[modality].repeat(2, 1)).chunk(2)
            with torch.no_grad():
                self._view_cosines.setdefault("view_cosine", []).append(F.cosine_similarity(view_a, view_b).mean())
                self._view_cosines.setdefault("view_input_cosine", []).append(
                    F.cosine_similarity(view_a, x0[modality]).mean())
            total = total + info_nce(view_a[:n_users], view_b[:n_users], self.tau, self.contrastive_precision) \
                + info_nce(view_a[n_users:], view_b[n_users:], self.tau, self.contrastive_precision)
        return total

    def alignment_loss(self, id_rows: torch.Tensor, final_rows: dict[str, torch.Tensor]) -> torch.Tensor:
        """``sum_m |mu_id - mu_m| + |sigma_id - sigma_m|`` (eq 25-27) over the given rows of the final ID
        and modality embeddings, unweighted."""
        id_rows = id_rows.detach() if self.align_to_fixed_id else id_rows
        mean_id, std_id = id_rows.mean(dim=0), id_rows.std(dim=0)
        total = 0.0
        for modality in self.modalities:
            rows_m = final_rows[modality]
            total = total + (mean_id - rows_m.mean(dim=0)).abs().mean() + (std_id - rows_m.std(dim=0)).abs().mean()
        return total

    def training_losses(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        unique_users, unique_items = torch.unique(users), torch.unique(positives)
        # every row the losses need, computed once per table: batch users, unique users | positives,
        # negatives, unique items
        user_rows = torch.cat([users, unique_users])
        item_rows = torch.cat([positives, negatives, unique_items])
        rows = torch.cat([user_rows, item_rows + self.n_users])
        n_user_rows, b = user_rows.shape[0], users.shape[0]
        id_rows, encoded_rows, enhancement_rows = self.encode_parts(rows, item_rows)
        if enhancement_rows is None:
            final_rows = encoded_rows
        else:
            final_rows = {m: self.enhance_items(encoded_rows[m], n_user_rows, enhancement_rows[m])
                          for m in self.modalities}
        combined = torch.cat([self.fuse(final_rows), id_rows], dim=1)  # score = fused dot + ID dot
        u = combined[:b]
        p = combined[n_user_rows : n_user_rows + b]
        n = combined[n_user_rows + b : n_user_rows + 2 * b]
        losses = self.bpr_and_reg(u, p, n, users, positives, negatives)
        if self.user_modality_input == "learned" and self.reg_weight > 0:
            # the per-modality user tables are input embeddings too: the same L2 as the ID rows
            losses["reg"] = losses["reg"] + self.reg_weight * l2_regularisation(
                *(gather_rows(self.user_modality[m], users) for m in self.modalities))
        # the batch's unique users then unique items (the rows of the auxiliary losses)
        unique_rows = torch.cat([torch.arange(b, n_user_rows, device=rows.device),
                                 torch.arange(n_user_rows + 2 * b, rows.shape[0], device=rows.device)])
        if self.lambda_e > 0:
            # mean squared entry of each E_m over the batch's unique users and items
            losses["emb"] = self.lambda_e * sum(squared_norm(rows_m) / rows_m.numel() for rows_m in
                                                (gather_rows(final_rows[m], unique_rows) for m in self.modalities))
        if self.use_diffusion_cl:
            x0 = {m: gather_rows(encoded_rows[m], unique_rows) for m in self.modalities}
            losses["cl"] = self.lambda_cl * self.contrastive_loss(x0, unique_users.shape[0])
            if self.diffusion_weight > 0:
                losses["diffusion"] = self.diffusion_weight * sum(self.denoising_loss(m, x0[m]) for m in self.modalities)
        if self.use_alignment:
            losses["align"] = self.lambda_align * self.alignment_loss(
                gather_rows(id_rows, unique_rows),
                {m: gather_rows(final_rows[m], unique_rows) for m in self.modalities})
        return losses
