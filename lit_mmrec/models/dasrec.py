"""DASRec (Han et al.): sparsity-aware interaction diffusion, modality attention, signal injection, cross-modal CL."""

from __future__ import annotations

from itertools import combinations
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lit_mmrec.compat import ddp_finds_unused_parameters
from lit_mmrec.data.graphs import generated_bipartite_graph
from lit_mmrec.models.base import RecommenderModule, gather_batch, user_item_table
from lit_mmrec.models.components import (
    bpr_loss,
    combine_layers,
    gather_rows,
    info_nce,
    info_nce_against,
    propagate,
    propagate_rows,
    sparse_matmul,
    squared_norm,
)
from lit_mmrec.models.components.graph_generation import (
    AttentionActivation,
    ModalityGraphGenerator,
    SignalFeatures,
    SparsityReference,
    ThresholdOn,
    diffusion_plan,
)
from lit_mmrec.models.components.precision import ProductPrecision, compute_dtype, warn_if_emulated

ContrastiveNegatives = Literal["batch", "all"]
DiffusionPass = Literal["interleaved", "epoch_start"]


class DASRec(RecommenderModule):
    """DASRec for any number (>= 1) of item modalities; equation numbers are the paper's.

    Dynamic sparse diffusion (eq 2-16)
        Diffusion runs over users' training-interaction rows ``alpha_u`` [n_items], built per batch of
        users from the sparse matrix (never the dense users x items matrix). The schedule is eq 6:
        ``1 - gamma_bar_t(u) = s_u * s * (gamma_min + (t - 1)/(T - 1) (gamma_max - gamma_min))`` with the
        user's sparsity ``s_u = 1 - |alpha_u| / M`` (eq 3) and noise strength s = ``noise_scale``.
        One x0-predicting MLP denoiser per modality (eq 14; DiffMM's ``Denoise``: input dropout,
        ``Linear(n_items + time_dim, denoiser_hidden) -> tanh -> Linear(.., n_items)``), trained with
        ``||x0_hat(alpha_t, t) - alpha_0||^2``, t uniform in 1..T, weighted per step as eq 13 weighs it
        (``reweight_steps``; unweighted, it is eq 16). Reverse steps use the posterior of eq 10-12 with
        Sigma fixed to sigma^2(t) (eq 13).
    Modality attention and signal injection (eq 17-20)
        ``z_u^m = alpha_hat_u^m E^m`` (eq 17) from the denoiser's prediction and the modality's
        projected item features; ``a_u = ModalityAttention(z_u)`` (eq 18, ``attention_heads`` heads);
        ``z_u = sum_m a_u^m z_u^m`` (eq 19). Signal injection (eq 20) is the MSE between
        ``alpha_hat E^m`` and ``alpha_0 E_id`` for each modality, plus the same MSE for the attention-fused
        ``z_u`` (the paper's "semantic path built on the aggregated representation"); this fused term
        is what trains the attention network (``fused_signal_injection``; off, only the per-modality
        terms remain, as in DiffMM, and the attention gets no gradient).
    Modality-aware graphs
        At the start of every ``rebuild_every_n_epochs``-th epoch, each modality's denoiser reconstructs
        every user's row (reverse process from the clean row, DiffMM's ``sampling_steps = 0``); the
        ``graph_top_k`` highest predictions are the user's candidates (DiffMM's rule, so every user has
        some), and a candidate i becomes an edge of G^m when its score reaches ``similarity_threshold``.
        The paper's "modality similarity threshold" (``threshold_on: similarity``, default) scores the
        cosine between the user's attention-fused preference and the item's features
        ``e_i^m = Norm(Trans(f_i^m))`` (eq 21), centred before normalising (``centre_similarity_features``:
        raw features are anisotropic, and centred rows make the preference blind to a constant offset of
        the denoised row). The preference is eq 17-19 taken in modality m's feature space,
        ``z_u^(m) = (sum_m' a_u^m' alpha_hat_u^m') e^m``: the modalities' denoised rows fused by the
        attention, embedded with e^m (eq 19 sums preferences of different modalities' spaces; compared
        with one modality's items, the other spaces' parts would only add noise). This is how the attention "guides the
        diffusion process in generating modality-aware user-item graph structures". ``prediction`` scores
        the denoised value itself, the "predicted interaction probability" (an unbounded regression
        output, about 0.02-0.9 on TikTok). Then ``D^-1/2 (G^m + I) D^-1/2`` (eq 23 with DiffMM's
        self-loops). Training uses G^m after DiffMM's edge dropout (``graph_keep_rate``, redrawn every
        epoch from the data module's seed and the epoch, so every DDP process draws the same graph; the
        self-loops drop with the same rate, so a dropped loop removes a node's own embedding from its
        G^m aggregation that epoch: node dropout on the modality graph); evaluation uses G^m without
        dropout. The generated edges are stored in checkpoints, so a restored model is evaluated on exactly
        the graph it was validated with. Every rebuild logs, per modality, ``train/graph_edges_<m>``,
        ``graph_users_<m>`` (users with an edge), ``graph_score_q10/q50/q90_<m>`` (the scores the threshold
        acted on), ``candidate_items_<m>`` (distinct items among all users' candidates) and the denoiser
        diagnostics over ``diagnostic_users`` sampled users: ``denoiser_own_item_rank_<m>`` (over users,
        the median of each user's median rank of their training items in their denoised row) and
        ``denoiser_mean_row_share_<m>`` (share of users whose row has cosine > 0.9 with the mean row). A
        graph left with fewer edges than one per 100 users is warned about, since G^m is then (nearly) the
        identity.
    Cross-modal contrastive learning (eq 21-28)
        ``e^m = normalize(Linear(f^m))`` (eq 21); ``Z_m = G^m [E_u; e^m]`` (eq 22-23); ``n_layers``
        propagations over the interaction graph, summed (eq 24-25). InfoNCE with cosine similarity and
        temperature ``tau``: modality pairs as anchors (eq 26, each unordered pair once) and the main
        view as anchor against every modality (eq 27), for users and items (eq 28).
    Aggregated representation (eq 29-32)
        ``z^m = G [E_u; e^m] + G [(G [E_u; e^m])_users; E_i] + modality_graph_weight * G^m [E_u; E_i]``
        (first- and second-order interaction-graph terms plus the modality graph, DiffMM's
        ``forward_MM``); ``h = sum_m softmax(k)_m z^m`` (eq 30, k initialised uniform); ``n_layers``
        propagations summed plus ``omega * normalize(h)`` (eq 31-32).
    Loss (eq 33-35)
        ``BPR + lambda_cl * L_cl + reg_weight * ||Theta||^2`` with Theta the ID embedding tables (whole
        tables, as DiffMM), plus ``diffusion_weight * L_diff + lambda_msi * L_msi``.

    Choices the paper leaves open (each a config option; defaults follow DiffMM):
        * One noise draw (step, Gaussian noise and input-dropout mask) per user row per training step,
          shared by the modalities' denoisers (DiffMM draws one per denoiser; each denoiser still sees
          eq 5's distribution, and it halves the random-number work).
        * Schedule: the diffusion objective is interleaved with recommendation training -- each training
          step diffuses the next ``n_users / steps_per_epoch`` users of a per-epoch permutation (each
          DDP process its own share), so every user's row is diffused once per epoch, like DiffMM's
          separate per-epoch diffusion pass, and every step trains every parameter. Denoiser inputs
          (rows, item ID embeddings, projected features) are detached, so the diffusion and
          signal-injection losses train only the denoisers and the attention (DiffMM's separate
          optimisers, in one).
        * ``diffusion_pass``: ``interleaved`` (default) is the schedule above; ``epoch_start`` is DiffMM's
          public code: at the start of every epoch, before the graphs are rebuilt, one pass over a
          permutation of all users in batches of ``diffusion_batch_size`` (1,024 when None) trains the
          denoisers and the attention with an Adam of their own (the optimizer's learning rate times
          ``denoiser_lr_scale``, no weight decay; DiffMM keeps one Adam per denoiser, the same per-parameter
          updates since each denoiser's loss reaches only its own weights), the graphs are then generated
          from the updated denoisers, and the recommendation steps carry no diffusion terms. Under DDP each
          process diffuses its share of the users and the denoisers' gradients are averaged before each
          step. The pass's optimizer state is saved in checkpoints, so resuming is exact.
        * ``diffusion_batch_size``: ``None`` (default) spreads the epoch's users over every step, as
          above; an integer diffuses DiffMM's batches of that many users (DiffMM: 1024, its ``batch``),
          one batch on each of ``ceil(users / diffusion_batch_size)`` evenly spaced steps, the others
          training without the diffusion terms. The denoisers then take DiffMM's number of optimizer
          steps per epoch, and the epoch fewer, larger products. Steps without diffusion leave the
          denoisers and the attention without gradients, so DDP needs
          ``strategy: ddp_find_unused_parameters_true`` (the model says so at the start of fitting).
        * ``reweight_steps``: True (default) weights each row's x0 error as eq 13 does: with mu_theta of
          eq 14, ``1 / (2 sigma^2(t)) ||mu_theta - mu_tilde||^2`` is ``(SNR(t-1) - SNR(t)) / 2`` times
          ``||alpha_hat - alpha_0||^2``, DiffMM's step weights (up to the 1/2, which Adam ignores), and eq 15
          (t = 1) weighs 1. False is eq 16's unweighted simplification; against signal injection at
          ``lambda_msi`` 0.1 the unweighted objective is so light that the denoisers predict nearly one row
          for every user.
        * ``denoiser_lr_scale``: the denoisers' learning rate as a multiple of the optimizer's (DiffMM gives
          them an optimizer of their own at the same rate: 1).
        * mu_theta is not conditioned on the user's sparsity s_u (eq 7 writes mu_theta(alpha_t, t)); s_u
          reaches the denoiser only through the noise level of its input (eq 6), as in DiffMM.
        * ``first_step_noise``: None (default) keeps eq 6's first step, ``s * gamma_min``; a value replaces it
          and keeps the later steps' ratios (DiffMM's code fixes its first beta at 1e-4;
          :func:`~lit_mmrec.models.components.diffusion.linear_noise_schedule`).
        * Eq 16 and 20 are squared norms; both losses average instead (DiffMM's ``mean_flat``): eq 16 over
          the n_items entries of a row, eq 20 over the d embedding columns, then over the batch. Under Adam
          only their ratio matters to the denoisers (no other loss reaches them), so the paper's sums equal
          ``lambda_msi * d / n_items`` here (0.0019 at the TikTok config's 0.1).
        * ``sparsity_reference``: M in eq 3; ``n_items`` (the paper) or ``max_degree`` (the largest user
          degree, which spreads s_u over [0, 1] instead of ~[0.98, 1]).
        * Denoiser width ``denoiser_hidden`` (DiffMM: 1000; the TikTok config's 128 validates as well over
          three seeds: at the paper's threshold its generated graphs are empty, and nearly so at 1000), step
          embedding ``denoiser_time_dim`` (DiffMM: 10), input dropout ``denoiser_dropout`` (DiffMM: 0.5).
        * ``denoiser_precision``: ``float32`` (default, DiffMM's) or ``bfloat16``, the arithmetic of the
          denoisers' products in training and in graph generation (mixed precision inside the denoisers
          only; :class:`MLPDenoiser`). An engineering option for devices with bfloat16 matrix units, where
          1000-wide denoisers over whole interaction rows, most of such an epoch, take a third of the time.
          Generated edges whose prediction lies within bfloat16's rounding (about 0.4%) of
          ``similarity_threshold`` can fall on either side of it.
        * ``graph_top_k`` candidates per user and modality before the threshold (DiffMM's ``rebuild_k``, 5
          in its code, where no threshold follows; :class:`~lit_mmrec.models.DiffMM`).
        * ``threshold_on`` and ``centre_similarity_features``: what the threshold compares (above).
        * Trans of eq 21 ("a nonlinear transformation") is one Linear layer per modality (DiffMM's
          ``image_trans`` / ``audio_trans`` are single linear maps too).
        * ``signal_features``: the item features e^m of eq 17 and 20, ``projected`` (``Trans(f^m)``, DiffMM's
          ``getImageFeats``; default) or ``normalised`` (``Norm(Trans(f^m))``, the e^m of eq 21). Detached
          either way: the signal-injection loss trains the denoisers and the attention only.
        * Attention: ``attention_hidden`` width and ``attention_activation`` (sigma of eq 18).
        * ``contrastive_negatives``: ``batch`` (default) contrasts against the batch's unique users /
          items; ``all`` against every user / item (eq 26-27 literally, DiffMM's ``contrastLoss``; about
          n_users / batch times the cost). Neither gathers across DDP processes: each process's loss is
          that of its own batch, and DDP averages the gradients, as for any per-batch loss.
        * ``contrastive_precision``: ``float32`` (default) or ``bfloat16``, the arithmetic of the InfoNCE
          similarity products (forward and backward; softmax and loss stay float32; :func:`info_nce`).
          Not in the paper; for devices with bfloat16 matrix units, like ``denoiser_precision``.
        * ``modality_graph_weight`` (DiffMM ``ris_adj_lambda`` 0.2), ``omega`` (``ris_lambda`` 0.5).
        * ``n_layers``: L of eq 24-25 and 31, which the paper does not give (DiffMM's ``gnn_layer``: 1, the
          default). The TikTok config uses 2, which validates higher than 1 at each of three seeds and
          higher than 3 on average.

    Structure: the diffusion, the denoisers, the attention, the candidate and threshold rules and the edges
    of the last generation belong to one component, :class:`~lit_mmrec.models.components.graph_generation.
    ModalityGraphGenerator` (``self.generator``; None without diffusion graphs), which DiffMM configures too.
    DASRec owns the recommender: the ID tables, Trans, the graphs built from the generated edges, the
    contrastive views and the aggregation.

    Ablations (paper Table IV): ``sparsity_scaled_noise=False`` is DASRec-n's plain diffusion;
    ``use_diffusion_graphs=False`` removes the diffusion and its graphs altogether (views and
    aggregation use the interaction graph in place of G^m); ``use_modality_attention=False`` is DASRec-a
    (uniform 1/M weights in eq 19).

    Args:
        n_users: number of users (linked from the data module).
        n_items: number of items (linked from the data module).
        feature_dims: width of each modality's item features, ``{name: d_m}`` (linked from the data module).
        embedding_dim: width d of the ID embeddings and of every projected modality feature.
        n_layers: L, the propagations over the interaction graph in eq 24-25 and 31.
        use_diffusion_graphs: generate the modality graphs G^m by diffusion (False: DASRec-n without them).
        sparsity_scaled_noise: scale each user's noise by s_u (eq 3-6; False: DASRec-n's plain diffusion).
        sparsity_reference: M in eq 3, ``n_items`` or ``max_degree``.
        diffusion_steps: T, the diffusion steps.
        noise_scale: s, the noise strength of eq 6.
        noise_min: gamma_min of the linear schedule (eq 6).
        noise_max: gamma_max of the linear schedule (eq 6).
        first_step_noise: replaces the first step's noise 1 - gamma_1 (None: eq 6's own).
        sampling_steps: noise steps applied to the clean row before graph generation's reverse process.
        reweight_steps: weight the x0 objective per step as eq 13 does (False: eq 16 unweighted).
        denoiser_hidden: width of each denoiser's hidden layer.
        denoiser_time_dim: width of the denoisers' step embedding.
        denoiser_dropout: input dropout of the denoisers in training.
        denoiser_precision: arithmetic of the denoisers' products, ``float32`` or ``bfloat16``.
        denoiser_lr_scale: the denoisers' learning rate as a multiple of the optimizer's.
        diffusion_weight: weight of the x0 objective in the total loss.
        diffusion_batch_size: users per diffusion batch (None: every step diffuses its share of users).
        diffusion_pass: ``interleaved`` with the recommendation steps, or DiffMM's own pass at ``epoch_start``.
        use_modality_attention: per-user modality attention (eq 18; False: DASRec-a, uniform weights).
        attention_heads: scoring heads of the attention.
        attention_hidden: hidden width of each attention head.
        attention_activation: sigma of eq 18, ``tanh`` or ``sigmoid``.
        lambda_msi: weight of the signal-injection loss (eq 20).
        signal_features: e^m of eq 17 and 20, ``projected`` (Trans(f^m)) or ``normalised`` (eq 21's).
        fused_signal_injection: add the signal-injection term of the attention-fused preference.
        similarity_threshold: the sim-threshold: the score a candidate needs to become an edge of G^m.
        threshold_on: what the threshold compares, ``similarity`` (cosine of z_u and e_i^m) or ``prediction``.
        centre_similarity_features: centre the item features before the similarity's normalisation.
        graph_top_k: candidates per user and modality, the highest denoised items.
        graph_keep_rate: edge keep rate of the generated graphs in training (DiffMM's edge dropout).
        rebuild_every_n_epochs: regenerate the graphs every this many epochs.
        rebuild_batch_size: users per block when generating graphs.
        diagnostic_users: users sampled for the denoiser diagnostics logged at each rebuild (0: none).
        modality_graph_weight: weight of the G^m term of the aggregation (DiffMM's ``ris_adj_lambda``).
        omega: weight of the normalised residual of eq 32 (DiffMM's ``ris_lambda``).
        lambda_cl: weight of the contrastive loss (eq 35).
        tau: InfoNCE temperature.
        use_modality_anchor: contrast modality pairs (eq 26).
        use_main_anchor: contrast the main view with each modality (eq 27).
        contrastive_negatives: InfoNCE negatives, ``batch`` (the batch's nodes) or ``all`` (every node).
        contrastive_precision: arithmetic of the InfoNCE similarity products, ``float32`` or ``bfloat16``.
        **kwargs: :class:`~lit_mmrec.models.base.RecommenderModule`'s (``optimizer``, ``scheduler``).
    """

    requires_features = True

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int] | None = None,
        embedding_dim: int = 128,
        n_layers: int = 1,
        # dynamic sparse diffusion
        use_diffusion_graphs: bool = True,
        sparsity_scaled_noise: bool = True,
        sparsity_reference: SparsityReference = "n_items",
        diffusion_steps: int = 5,
        noise_scale: float = 0.3,
        noise_min: float = 0.0001,
        noise_max: float = 0.02,
        first_step_noise: float | None = None,
        sampling_steps: int = 0,
        reweight_steps: bool = True,
        denoiser_hidden: int = 1000,
        denoiser_time_dim: int = 10,
        denoiser_dropout: float = 0.5,
        denoiser_precision: ProductPrecision = "float32",
        denoiser_lr_scale: float = 1.0,
        diffusion_weight: float = 1.0,
        diffusion_batch_size: int | None = None,
        diffusion_pass: DiffusionPass = "interleaved",
        # attention and signal injection
        use_modality_attention: bool = True,
        attention_heads: int = 4,
        attention_hidden: int = 64,
        attention_activation: AttentionActivation = "tanh",
        lambda_msi: float = 0.1,
        signal_features: SignalFeatures = "projected",
        fused_signal_injection: bool = True,
        # modality-aware graphs
        similarity_threshold: float = 0.6,
        threshold_on: ThresholdOn = "similarity",
        centre_similarity_features: bool = True,
        graph_top_k: int = 5,
        graph_keep_rate: float = 0.5,
        rebuild_every_n_epochs: int = 1,
        rebuild_batch_size: int = 2048,
        diagnostic_users: int = 2048,
        modality_graph_weight: float = 0.2,
        omega: float = 0.5,
        # contrastive learning
        lambda_cl: float = 0.01,
        tau: float = 0.5,
        use_modality_anchor: bool = True,
        use_main_anchor: bool = True,
        contrastive_negatives: ContrastiveNegatives = "batch",
        contrastive_precision: ProductPrecision = "float32",
        **kwargs: Any,
    ) -> None:
        super().__init__(n_users, n_items, feature_dims=feature_dims, **kwargs)
        if not 0.0 < graph_keep_rate <= 1.0:
            raise ValueError(f"graph_keep_rate must be in (0, 1], got {graph_keep_rate}")
        if rebuild_every_n_epochs < 1:
            raise ValueError(f"rebuild_every_n_epochs must be >= 1, got {rebuild_every_n_epochs}")
        if diffusion_batch_size is not None and diffusion_batch_size < 1:
            raise ValueError(f"diffusion_batch_size must be >= 1 or null (spread over every step), "
                             f"got {diffusion_batch_size}")
        if denoiser_lr_scale <= 0:
            raise ValueError(f"denoiser_lr_scale must be positive, got {denoiser_lr_scale}")
        if diffusion_pass not in ("interleaved", "epoch_start"):
            raise ValueError(f"diffusion_pass must be 'interleaved' or 'epoch_start', got {diffusion_pass!r}")
        self.diffusion_pass = diffusion_pass
        self._pass_optimizer: torch.optim.Optimizer | None = None
        self._pass_optimizer_state: dict[str, Any] | None = None  # read from a checkpoint before fitting starts
        self.modalities = list(self.feature_dims)
        self.n_layers = n_layers
        self.use_diffusion_graphs = use_diffusion_graphs
        self.diffusion_weight = diffusion_weight
        self.diffusion_batch_size = diffusion_batch_size
        self.denoiser_lr_scale = denoiser_lr_scale
        self.lambda_msi = lambda_msi
        self.graph_keep_rate = graph_keep_rate
        self.rebuild_every_n_epochs = rebuild_every_n_epochs
        self.modality_graph_weight = modality_graph_weight
        self.omega = omega
        self.lambda_cl, self.tau = lambda_cl, tau
        self.use_modality_anchor, self.use_main_anchor = use_modality_anchor, use_main_anchor
        self.contrastive_negatives = contrastive_negatives
        compute_dtype(contrastive_precision, "contrastive_precision")  # fail at construction, not at the first step
        self.contrastive_precision = contrastive_precision

        self.id_embedding = user_item_table(n_users, n_items, embedding_dim)
        self.projections = nn.ModuleDict({m: nn.Linear(d, embedding_dim) for m, d in self.feature_dims.items()})
        for projection in self.projections.values():
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)
        self.modality_logits = nn.Parameter(torch.full((len(self.modalities),), 1.0 / len(self.modalities)))
        self.generator = ModalityGraphGenerator(
            n_users, n_items, self.modalities, embedding_dim, sparsity_scaled_noise=sparsity_scaled_noise,
            sparsity_reference=sparsity_reference, diffusion_steps=diffusion_steps, noise_scale=noise_scale,
            noise_min=noise_min, noise_max=noise_max, first_step_noise=first_step_noise,
            sampling_steps=sampling_steps, reweight_steps=reweight_steps, denoiser_hidden=denoiser_hidden,
            denoiser_time_dim=denoiser_time_dim, denoiser_dropout=denoiser_dropout,
            denoiser_precision=denoiser_precision, use_modality_attention=use_modality_attention,
            attention_heads=attention_heads, attention_hidden=attention_hidden,
            attention_activation=attention_activation, signal_features=signal_features,
            fused_signal_injection=fused_signal_injection, similarity_threshold=similarity_threshold,
            threshold_on=threshold_on, centre_similarity_features=centre_similarity_features,
            graph_top_k=graph_top_k, rebuild_batch_size=rebuild_batch_size, diagnostic_users=diagnostic_users,
        ) if use_diffusion_graphs else None
        # the normalised graphs built from the generator's edges, for training (edge dropout) and evaluation
        self._graphs_train: dict[str, torch.Tensor] = {}
        self._graphs_eval: dict[str, torch.Tensor] = {}
        self._diffusion_plan: dict[int, torch.Tensor] = {}  # batch index in the epoch -> users to diffuse
        self._batch_in_epoch = 0
        self._warned_sparse_graphs: set[str] = set()

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The denoisers learn at ``denoiser_lr_scale`` times the optimizer's rate (DiffMM gives them an
        optimizer of their own), everything else at the optimizer's."""
        if self.generator is not None and self.diffusion_pass == "epoch_start":  # they have an Adam of their own
            generating = {id(p) for p in self.generator.parameters()}
            return [{"params": [p for p in self.parameters() if id(p) not in generating]}]
        if self.generator is None or self.denoiser_lr_scale == 1.0:
            return super().parameter_groups()
        denoising = {id(p) for p in self.generator.denoisers.parameters()}
        return [{"params": [p for p in self.parameters() if id(p) not in denoising]},
                {"params": list(self.generator.denoisers.parameters()), "lr_scale": self.denoiser_lr_scale}]

    # ---- data-derived tensors ----
    def on_graphs_ready(self) -> None:
        device = self.graphs.norm_adjacency.device
        if self.generator is not None:
            warn_if_emulated(self.generator.denoiser_precision, device)
            self.generator.set_interactions(self.graphs.train_interactions)
        warn_if_emulated(self.contrastive_precision, device, "contrastive_precision")
        self._graphs_train, self._graphs_eval = {}, {}

    # ---- modality features ----
    def projected_features(self, modality: str) -> torch.Tensor:
        """Trans(f^m) [n_items, d]."""
        return self.projections[modality](self.graphs.features[modality])

    def generator_features(self) -> dict[str, torch.Tensor]:
        """Trans(f^m) [n_items, d] per modality, detached: what the generator's losses and rules see."""
        return {m: self.projected_features(m).detach() for m in self.modalities}

    # ---- diffusion (eq 2-20) and graph generation ----
    def diffusion_losses(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed x0 objective (eq 13-16) and signal-injection loss (eq 17-20) for a batch of users."""
        return self.generator.losses(users, self.id_embedding[self.n_users:].detach(), self.generator_features())

    def generate_edges(self) -> dict[str, torch.Tensor]:
        """Generates the edges [2, E] (users; items) of each modality graph from every user's denoised rows
        (:meth:`ModalityGraphGenerator.generate`)."""
        return self.generator.generate(self.generator_features())

    def report_generated_graphs(self) -> None:
        """Logs, per modality, ``train/<statistic>_<modality>`` of the last generation (``graph_edges``,
        ``graph_users`` with at least one edge, quantiles ``graph_score_q10/q50/q90`` of the scores the
        threshold acted on, ``candidate_items`` distinct among every user's candidates, and the denoiser
        diagnostics), and warns once per modality when ``similarity_threshold`` left fewer edges than one per
        100 users in a graph generated after the first epoch (the untrained denoisers of epoch 0 predict
        nothing): such a G^m is (nearly) the identity, and the diffusion branch then reaches the
        recommender through nothing."""
        generator = self.generator
        for modality, edges in generator.edges.items():
            count = int(edges.shape[1])
            self.log(f"train/graph_edges_{modality}", float(count), sync_dist=True)
            for name, value in generator.stats.get(modality, {}).items():
                if name != "graph_edges":
                    self.log(f"train/{name}_{modality}", value, sync_dist=True)
            peak = generator.peaks.get(modality)
            if 100 * count < self.n_users and peak is not None and self.current_epoch > 0 \
                    and modality not in self._warned_sparse_graphs:
                self._warned_sparse_graphs.add(modality)
                rank_zero_warn(
                    f"DASRec: similarity_threshold={generator.similarity_threshold} kept {count} edges of the "
                    f"generated {modality} graph for {self.n_users} users (epoch {self.current_epoch}; the "
                    f"largest {generator.threshold_on} score of a candidate was {peak:.3f}), so G^{modality} is "
                    "nearly the identity. Lower similarity_threshold, or raise graph_top_k; "
                    "train/graph_edges_<modality> and train/graph_score_q50_<modality> log the sizes and scores.")

    def _build_graphs(self, keep_rate: float, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        device = self.id_embedding.device
        return {
            m: generated_bipartite_graph(e[0].to(device), e[1].to(device), self.n_users, self.n_items,
                                         keep_rate, generator)
            for m, e in self.generator.edges.items()
        }

    def modality_graphs(self) -> dict[str, torch.Tensor]:
        """G^m per modality: the training graphs (edge dropout) in training, the full ones otherwise."""
        if not self.use_diffusion_graphs:
            return {m: self.graphs.norm_adjacency for m in self.modalities}
        graphs_eval = self._ensure_eval_graphs()
        return self._graphs_train if self.training and self._graphs_train else graphs_eval

    def _ensure_eval_graphs(self) -> dict[str, torch.Tensor]:
        """The full generated graphs, generating the edges first if there are none yet."""
        if self.generator.edges is None:
            self.generate_edges()
        if not self._graphs_eval:
            self._graphs_eval = self._build_graphs(1.0, None)
        return self._graphs_eval

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if not self.use_diffusion_graphs:
            return
        epoch = self.current_epoch
        if self.diffusion_pass == "epoch_start":
            self.train_denoisers(epoch)
        if epoch % self.rebuild_every_n_epochs == 0:
            self.generator.edges, self._graphs_eval = None, {}
        graphs_eval = self._ensure_eval_graphs()
        self.report_generated_graphs()
        self._graphs_train = self._build_graphs(self.graph_keep_rate, self.epoch_generator(epoch)) \
            if self.graph_keep_rate < 1.0 else graphs_eval
        self._plan_diffusion_users(epoch)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.use_diffusion_graphs and self.diffusion_batch_size is not None and self.trainer.world_size > 1 \
                and not ddp_finds_unused_parameters(self.trainer.strategy):
            raise ValueError(
                f"DASRec with diffusion_batch_size={self.diffusion_batch_size} trains the denoisers on some "
                "steps only, which DDP rejects unless it looks for unused parameters: set "
                "trainer.strategy to ddp_find_unused_parameters_true, or diffusion_batch_size to null")

    def pass_optimizer(self) -> torch.optim.Optimizer:
        """The Adam of ``diffusion_pass: epoch_start`` over the generator's parameters (created on first use,
        with the state a checkpoint carried)."""
        if self._pass_optimizer is None:
            main = self.trainer.optimizers[0] if self._trainer is not None and self.trainer.optimizers else None
            lr = (main.defaults["lr"] if main is not None else 1e-3) * self.denoiser_lr_scale
            self._pass_optimizer = torch.optim.Adam(self.generator.parameters(), lr=lr)
            if self._pass_optimizer_state is not None:
                self._pass_optimizer.load_state_dict(self._pass_optimizer_state)
                self._pass_optimizer_state = None
        return self._pass_optimizer

    def train_denoisers(self, epoch: int) -> dict[str, float]:
        """DiffMM's diffusion pass (``diffusion_pass: epoch_start``): every user's row once, in batches of
        ``diffusion_batch_size`` (1,024 when None), one step of the pass's Adam per batch; returns the mean
        losses, also logged as ``train/diffusion_pass`` and ``train/msi_pass``."""
        optimizer = self.pass_optimizer()
        world = self.trainer.world_size if self._trainer is not None else 1
        plan = diffusion_plan(self.n_users, self.n_users, self.diffusion_batch_size or 1024,
                              seed=int(getattr(self.trainer.datamodule, "seed", 0)) if self._trainer else 0,
                              epoch=epoch, rank=self.global_rank, world_size=world, device=self.id_embedding.device)
        totals = torch.zeros(2, device=self.id_embedding.device)
        for users in plan.values():  # the batches of one permutation, in order
            optimizer.zero_grad(set_to_none=True)
            diffusion_loss, signal_loss = self.diffusion_losses(users)
            (self.diffusion_weight * diffusion_loss + self.lambda_msi * signal_loss).backward()
            if world > 1:  # DDP does not see this pass: average the gradients by hand
                for parameter in self.generator.parameters():
                    if parameter.grad is not None:
                        torch.distributed.all_reduce(parameter.grad)
                        parameter.grad /= world
            optimizer.step()
            totals += torch.stack([diffusion_loss.detach(), signal_loss.detach()])
        means = {"diffusion_pass": float(totals[0]) / len(plan), "msi_pass": float(totals[1]) / len(plan)}
        if self._trainer is not None:
            for name, value in means.items():
                self.log(f"train/{name}", value, on_step=False, on_epoch=True, sync_dist=True)
        return means

    def _plan_diffusion_users(self, epoch: int) -> None:
        if self.diffusion_pass == "epoch_start":  # the denoisers trained before the graphs were rebuilt
            self._diffusion_plan = {}
            return
        self._diffusion_plan = diffusion_plan(
            self.n_users, int(self.trainer.num_training_batches), self.diffusion_batch_size,
            seed=int(getattr(self.trainer.datamodule, "seed", 0)), epoch=epoch, rank=self.global_rank,
            world_size=self.trainer.world_size, device=self.id_embedding.device)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._batch_in_epoch = batch_idx

    # ---- representations ----
    def modality_inputs(self) -> dict[str, torch.Tensor]:
        """[E_u; normalize(Trans(f^m))] [N, d] per modality (eq 21)."""
        users = self.id_embedding[: self.n_users]
        return {m: torch.cat([users, F.normalize(self.projected_features(m), dim=1)]) for m in self.modalities}

    def aggregate(self, inputs: dict[str, torch.Tensor], graphs: dict[str, torch.Tensor],
                  rows: torch.Tensor | None = None) -> torch.Tensor:
        """Final representations H_bar [N, d] (eq 29-32); given ``rows`` (users-then-items indices), only
        those rows [len(rows), d], the last propagation run for them alone (:func:`propagate_rows`).

        ``h = sum_m a_m z^m`` with ``z^m = A [E_u; e^m] + A [(A [E_u; e^m])_users; E_i] + w_G G^m E`` and
        ``a = softmax(k)``. A (the interaction graph) is linear and has no user-user or item-item block,
        and the a_m sum to one, so the two interaction-graph terms of all modalities together are those
        of the single weighted feature table ``e_bar = sum_m a_m e^m``: two products of width d instead
        of two per modality. Same values (up to float rounding) and the same gradients, also for k:
        what this drops is the same for every modality, which the softmax's gradient cancels.
        """
        adjacency = self.graphs.norm_adjacency
        weights = torch.softmax(self.modality_logits, dim=0)
        users, items = self.id_embedding[: self.n_users], self.id_embedding[self.n_users:]
        weighted = sum(weight * inputs[m][self.n_users:] for weight, m in zip(weights, self.modalities))
        first = sparse_matmul(adjacency, torch.cat([users, weighted]))
        second = sparse_matmul(adjacency, torch.cat([first[: self.n_users], items]))
        fused = first + second
        if self.use_diffusion_graphs and self.modality_graph_weight:
            for weight, modality in zip(weights, self.modalities):
                fused = fused + (self.modality_graph_weight * weight) * sparse_matmul(graphs[modality], self.id_embedding)
        if rows is None:
            layers = propagate(adjacency, fused, self.n_layers)  # eq 31
            return combine_layers(layers, "sum") + self.omega * F.normalize(fused, dim=1)  # eq 32
        return propagate_rows(adjacency, fused, self.n_layers, rows, "sum") \
            + self.omega * F.normalize(gather_rows(fused, rows), dim=1)

    def contrastive_views(self, inputs: dict[str, torch.Tensor], graphs: dict[str, torch.Tensor],
                          rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Z_bar_m [N, d] per modality (eq 22-25); given ``rows``, only those rows [len(rows), d]."""
        starts = torch.cat([sparse_matmul(graphs[m], inputs[m]) for m in self.modalities], dim=1)  # eq 22
        # the propagation over the interaction graph is shared: all modalities' columns at once (eq 24-25)
        adjacency = self.graphs.norm_adjacency
        if rows is None:
            views = combine_layers(propagate(adjacency, starts, self.n_layers), "sum")
        else:
            views = propagate_rows(adjacency, starts, self.n_layers, rows, "sum")
        return dict(zip(self.modalities, views.chunk(len(self.modalities), dim=1)))

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        final = self.aggregate(self.modality_inputs(), self.modality_graphs())
        return final[: self.n_users], final[self.n_users:]

    def input_table(self) -> torch.Tensor:
        return self.id_embedding

    # ---- losses ----
    def contrastive_loss(self, final: torch.Tensor, views: dict[str, torch.Tensor], users: torch.Tensor,
                         items: torch.Tensor, n_user_rows: int | None = None) -> torch.Tensor:
        """``L_cl = L_cl^user + L_cl^item`` (eq 26-28), unweighted.

        ``final`` and ``views`` are users-then-items tables whose first ``n_user_rows`` rows (default
        ``n_users``: the full tables) are users; ``users`` and ``items`` index the two parts. Each table's
        rows (the main view and each modality's) are gathered once per node set and shared by every
        pair they are in.
        """
        n_user_rows = self.n_users if n_user_rows is None else n_user_rows
        pairs: list[tuple[str | None, str]] = []
        if self.use_modality_anchor:
            pairs += list(combinations(self.modalities, 2))  # eq 26
        if self.use_main_anchor:
            pairs += [(None, m) for m in self.modalities]  # eq 27; None is the main view H_bar
        tables: dict[str | None, torch.Tensor] = {None: final, **views}
        # rows gathered per node set: the anchors, and the positives too unless every node is a candidate
        used = {a for a, _ in pairs} | ({b for _, b in pairs} if self.contrastive_negatives == "batch" else set())
        total = final.new_zeros(())
        for nodes, offset, end in ((users, 0, n_user_rows), (items, n_user_rows, final.shape[0])):
            rows = {name: gather_rows(tables[name], nodes + offset) for name in used}
            if self.contrastive_negatives == "all":  # every node of the side as a negative
                for a, b in pairs:
                    total = total + info_nce_against(rows[a], tables[b][offset:end], nodes, self.tau,
                                                     self.contrastive_precision)
            else:  # the other nodes of the batch as negatives
                for a, b in pairs:
                    total = total + info_nce(rows[a], rows[b], self.tau, self.contrastive_precision)
        return total

    def training_losses(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        inputs = self.modality_inputs()
        graphs = self.modality_graphs()
        contrastive = self.lambda_cl > 0 and (self.use_modality_anchor or self.use_main_anchor)
        b = users.shape[0]
        if contrastive and self.contrastive_negatives == "all":  # every node a negative: the full tables
            final = self.aggregate(inputs, graphs)
            u, p, n = gather_batch(final, self.n_users, users, positives, negatives)
        else:
            # only the rows the losses read: the batch, then its unique users and unique positives
            batch_users, batch_items = torch.unique(users), torch.unique(positives)
            rows = torch.cat([users, positives + self.n_users, negatives + self.n_users, batch_users,
                              batch_items + self.n_users])
            final_rows = self.aggregate(inputs, graphs, rows)
            u, p, n = final_rows[: 3 * b].split(b)
        losses = {"bpr": bpr_loss((u * p).sum(dim=1), (u * n).sum(dim=1))}  # eq 33-34
        if self.reg_weight > 0:
            losses["reg"] = self.reg_weight * squared_norm(self.id_embedding)  # lambda_2 ||Theta||^2
        if contrastive and self.contrastive_negatives == "all":
            views = self.contrastive_views(inputs, graphs)
            losses["cl"] = self.lambda_cl * self.contrastive_loss(final, views, users, positives)
        elif contrastive:
            views = self.contrastive_views(inputs, graphs, rows[3 * b:])
            n_batch_users = batch_users.shape[0]
            losses["cl"] = self.lambda_cl * self.contrastive_loss(
                final_rows[3 * b:], views, torch.arange(n_batch_users, device=users.device),
                torch.arange(batch_items.shape[0], device=users.device), n_user_rows=n_batch_users)
        chunk = self._diffusion_plan.get(self._batch_in_epoch) if self.use_diffusion_graphs else None
        if chunk is not None and len(chunk):
            diffusion_loss, signal_loss = self.diffusion_losses(chunk)
            losses["diffusion"] = self.diffusion_weight * diffusion_loss
            losses["msi"] = self.lambda_msi * signal_loss
        return losses

    # ---- checkpoints carry the generated graphs ----
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.generator is not None and self.generator.edges is not None:
            checkpoint["dasrec_generated_edges"] = {m: e.cpu() for m, e in self.generator.edges.items()}
        if self._pass_optimizer is not None:
            checkpoint["dasrec_pass_optimizer"] = self._pass_optimizer.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        for old in [k for k in state if k.startswith(("denoisers.", "attention."))]:  # written before the generator
            state[f"generator.{old}"] = state.pop(old)
        self._pass_optimizer, self._pass_optimizer_state = None, checkpoint.get("dasrec_pass_optimizer")
        edges = checkpoint.get("dasrec_generated_edges")
        if self.generator is not None:
            self.generator.edges = None if edges is None else dict(edges)
        self._graphs_train, self._graphs_eval = {}, {}
