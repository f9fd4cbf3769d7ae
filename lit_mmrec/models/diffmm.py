"""DiffMM (Jiang et al., ACM MM 2024), the model DASRec extends, as a baseline: DASRec without its additions."""

from __future__ import annotations

import copy
import inspect
from typing import Any, Literal

from lit_mmrec.models.components.precision import ProductPrecision
from lit_mmrec.models.dasrec import ContrastiveNegatives, DASRec, DiffusionPass

ContrastAnchor = Literal["modalities", "main"]


class DiffMM(DASRec):
    """DiffMM: per-modality diffusion over users' interaction rows generates a user-item graph per modality,
    which feeds a LightGCN-style recommender trained with BPR and cross-modal InfoNCE.

    DASRec (:class:`~lit_mmrec.models.DASRec`) is DiffMM plus three components; this class is DASRec with
    them removed and DiffMM's own rules in their place, so the two run on the same code and differ only
    where the papers do:

    ================================  =========================================  ===============================
    part                              DASRec                                     DiffMM (here)
    ================================  =========================================  ===============================
    forward noise                     scaled by the user's sparsity (eq 3-6)     one schedule for every user,
                                                                                 first step's noise 1e-4
    x0 objective (eq 16)              unweighted (configurable)                  DiffMM's SNR(t-1) - SNR(t)
                                                                                 step weights
    signal injection                  per modality + attention-fused path        per modality only
    modality attention                4 heads                                    none
    generated graph                   top-k predictions above a threshold        every user's top-k predictions
    InfoNCE anchors                   modality pairs (eq 26) and main view       ``contrast_with``: modality
                                      (eq 27)                                    pairs or main view (DiffMM's
                                                                                 ``cl_method`` 0 / 1)
    ================================  =========================================  ===============================

    Everything else is shared: MLP denoisers over whole interaction rows (``Linear(n_items + time_dim,
    denoiser_hidden) -> tanh -> Linear(.., n_items)``, input dropout), the reverse process from the clean row
    for graph generation, edge dropout on the generated graphs (``graph_keep_rate``), the aggregation
    ``A [E_u; e^m] + A [(A [E_u; e^m])_u; E_i] + modality_graph_weight * G^m E`` with softmax modality
    weights and the ``omega``-weighted normalised residual (DiffMM's ``forward_MM``), L2 on the whole ID
    tables. Defaults are those of DiffMM's ``Params.py``: 64-d, one layer, T = 5, noise scale 0.1 in
    [1e-4, 0.02], 1000-wide denoisers with a 10-d step embedding, ``e_loss`` 0.1, ``rebuild_k`` 5, keep
    rate 0.5, ``ris_adj_lambda`` 0.2, ``ris_lambda`` 0.5, ``ssl_reg`` 0.01, temperature 0.5, L2 1e-5, every
    node a negative. Its per-dataset commands are the experiment configs (``configs/experiment/diffmm_*``).

    Where this runs DiffMM's method differently (engineering, not modelling):
        * DiffMM trains the denoisers in a separate pass over all users at the start of each epoch, with
          their own Adam optimisers, then rebuilds the graphs, then trains the recommender. By default
          (``diffusion_pass: interleaved``) graphs are rebuilt at the start of each epoch from the denoisers
          as they stand (one diffusion pass behind DiffMM's), and the diffusion batches
          (``diffusion_batch_size``, DiffMM's 1,024 users) are interleaved with the recommendation steps
          under one Adam optimiser; the denoisers' inputs are detached, so their losses train only them.
          ``diffusion_pass: epoch_start`` runs DiffMM's schedule (see DASRec's docstring).
        * One noise draw per row is shared by the modalities' denoisers (DiffMM draws one per denoiser).
        * Edge dropout keeps or drops an edge's two directions together (DiffMM draws each stored entry,
          self-loops included, on its own), and evaluation uses the generated graphs without it (DiffMM
          evaluates on the dropped ones).
        * Batches are built from sparse rows; no users x items matrix is ever held (DiffMM's code is dense).
        * Steps without a diffusion batch leave the denoisers without gradients, so DDP needs
          ``strategy: ddp_find_unused_parameters_true`` with ``diffusion_batch_size`` set (the model says so
          when fitting starts); ``diffusion_batch_size: null`` spreads the users over every step instead.

    Args:
        n_users: number of users (linked from the data module).
        n_items: number of items (linked from the data module).
        contrast_with: ``modalities`` contrasts each pair of modality views (DiffMM's default, ``cl_method``
            0); ``main`` contrasts each modality view with the main representation (``cl_method`` 1, its
            TikTok command).
        diffusion_pass: ``interleaved`` with the recommendation steps, or DiffMM's own pass at ``epoch_start``.
        graph_top_k: DiffMM's ``rebuild_k`` (5), edges per user in each generated graph.
        first_step_noise: the first diffusion step's noise ``1 - gamma_1``; DiffMM's code builds its betas
            from the linear schedule, then sets the first to 1e-4 (``beta_fixed``) instead of ``s * gamma_min``.
        reg_weight: weight of the L2 on the whole ID tables (DiffMM's ``reg``).
        Other arguments: as :class:`~lit_mmrec.models.DASRec`'s of the same name; ``**kwargs`` go to
        :class:`~lit_mmrec.models.base.RecommenderModule` (``optimizer``, ``scheduler``).
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int] | None = None,
        embedding_dim: int = 64,
        n_layers: int = 1,
        diffusion_steps: int = 5,
        noise_scale: float = 0.1,
        noise_min: float = 0.0001,
        noise_max: float = 0.02,
        first_step_noise: float | None = 0.0001,
        denoiser_hidden: int = 1000,
        denoiser_time_dim: int = 10,
        denoiser_dropout: float = 0.5,
        denoiser_precision: ProductPrecision = "float32",
        diffusion_batch_size: int | None = 1024,
        diffusion_pass: DiffusionPass = "interleaved",
        lambda_msi: float = 0.1,
        graph_top_k: int = 5,
        graph_keep_rate: float = 0.5,
        rebuild_batch_size: int = 2048,
        modality_graph_weight: float = 0.2,
        omega: float = 0.5,
        lambda_cl: float = 0.01,
        tau: float = 0.5,
        contrast_with: ContrastAnchor = "modalities",
        contrastive_negatives: ContrastiveNegatives = "all",
        contrastive_precision: ProductPrecision = "float32",
        reg_weight: float = 1e-5,
        **kwargs: Any,
    ) -> None:
        if contrast_with not in ("modalities", "main"):
            raise ValueError(f"contrast_with must be 'modalities' or 'main', got {contrast_with!r}")
        super().__init__(
            n_users, n_items, feature_dims=feature_dims, embedding_dim=embedding_dim, n_layers=n_layers,
            use_diffusion_graphs=True, sparsity_scaled_noise=False, diffusion_steps=diffusion_steps,
            noise_scale=noise_scale, noise_min=noise_min, noise_max=noise_max,
            first_step_noise=first_step_noise, sampling_steps=0,
            reweight_steps=True, denoiser_hidden=denoiser_hidden, denoiser_time_dim=denoiser_time_dim,
            denoiser_dropout=denoiser_dropout, denoiser_precision=denoiser_precision,
            diffusion_batch_size=diffusion_batch_size, diffusion_pass=diffusion_pass, use_modality_attention=False, lambda_msi=lambda_msi,
            signal_features="projected", fused_signal_injection=False, similarity_threshold=float("-inf"),
            threshold_on="prediction",
            graph_top_k=graph_top_k, graph_keep_rate=graph_keep_rate, rebuild_every_n_epochs=1,
            rebuild_batch_size=rebuild_batch_size, modality_graph_weight=modality_graph_weight, omega=omega,
            lambda_cl=lambda_cl, tau=tau, use_modality_anchor=contrast_with == "modalities",
            use_main_anchor=contrast_with == "main", contrastive_negatives=contrastive_negatives,
            contrastive_precision=contrastive_precision, reg_weight=reg_weight, **kwargs)
        # the saved hyperparameters are this class's arguments, without the DASRec ones it fixes, so that
        # load_from_checkpoint passes DiffMM what DiffMM takes
        fixed = set(inspect.signature(DASRec.__init__).parameters) - set(inspect.signature(DiffMM.__init__).parameters)
        self.remove_ignored_hparams(sorted(fixed))
        self._hparams_initial = copy.deepcopy(self._hparams)
