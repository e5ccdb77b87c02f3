"""The registry of every jaxreg component: what it is, where it comes from, what it matches.

Researchers browse by paper, so each entry names its paper (title and arXiv id), its family,
the implementation it agrees with numerically, and whether jaxreg or optax provides it. The
contract tests (``tests/test_contract.py``) run every entry through the same checks, driven by
``inputs`` (the call signature) and ``hparams`` (the numeric hyperparameters with the defaults
the function uses; each may be a traced array, so the tests vmap over each).

``jaxreg list [--family F]`` prints this table.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType

import optax
import optax.contrib

from jaxreg.losses import (
    chunked,
    classification,
    contrastive,
    metric,
    noisy_labels,
    self_distillation,
    self_supervised,
)
from jaxreg.multiobjective import (
    auxiliary,
    balancing,
    bargaining,
    conflict_free,
    dual_cone,
    loss_weighting,
    min_norm,
    priority,
    robust,
    scalarization,
    stochastic,
    surgery,
    vaccine,
    weighted,
)
from jaxreg.optim import multi_adam, proximal, scale_invariant, sharpness
from jaxreg.optim import weight_decay as weight_decay_lib
from jaxreg.optim.gravity import gravity
from jaxreg.regularizers import (
    domain_generalization,
    equivariance,
    fairness,
    lora,
    outputs,
    reparameterization,
    smoothness,
    transport,
    weights,
)
from jaxreg.train import hypergradient, model_editing
from jaxreg.train.fork_merge import fork_merge

# Call signatures the contract tests know how to feed (see tests/test_contract.py).
INPUT_KINDS = {
    "logits, labels": "logits [B, K] float, labels [B] int -> loss [B]",
    "logits, targets": "logits [B, K] float, multi-hot targets [B, K] -> loss [B]",
    "logits, labels, class_counts": "logits [B, K], labels [B] int, counts [K] -> loss [B]",
    "features, centers, labels": "features [B, D], class centers [K, D], labels [B] -> loss [B]",
    "logits, labels, example_state": (
        "logits [B, K], labels [B] int, per-example state [B, K] -> (loss [B], new state [B, K])"),
    "jacobian": ("constructor(**hparams, num_objectives=m) -> optax transformation taking the "
                 "Jacobian pytree [m, ...] -> one update"),
    "jacobian, values": ("as jacobian, and the update also takes the objectives' values [m] as "
                         "the extra argument `values` (make_step passes them)"),
    "objective": "wraps an objective (params, batch, hparams, key) -> terms into another",
    "procedure": "a training procedure of jaxreg.train (objective, optimizer, data -> result)",
    "transformation": ("constructor(**hparams) -> optax transformation over gradients that "
                       "needs `params` in update (chain it with, or use it as, the optimizer)"),
    # Regularizers return the penalty times `strength` (tests/regularizers/test_contract.py).
    "params": "parameter pytree (mask= picks leaves; kernels by default) -> scalar",
    "params, projectors": ("params, a pytree of projectors onto equivariant kernels (None: leaf "
                           "not penalized) -> scalar"),
    "lora_a, lora_b, pretrained": (
        "LoRA down-projections [N, d_in, r], up-projections [N, r, d_out], frozen kernels "
        "[d_in, d_out] (pytrees of the same structure) -> scalar"),
    "params, anchor": "params, anchor pytree of the same structure -> scalar",
    "params, anchor, fisher": "params, anchor, diagonal Fisher pytree -> scalar",
    "logits": "logits [B, K] -> penalty [B]",
    "loss": "loss (scalar or [B]) -> the regularized scalar",
    "student, teacher": "student [B, K], teacher [B, K] (no gradient) -> penalty [B]",
    "apply_fn, params, inputs": "apply_fn(params, inputs) -> outputs; params, inputs -> scalar",
    "apply_fn, params, inputs, key": "as above, with a PRNG key -> scalar",
    "loss_fn, params, key": "loss_fn(params) -> scalar; params, PRNG key -> scalar",
    "inputs, targets, key": "inputs [B, ...], targets [B, K], key -> (mixed inputs, targets)",
    "outputs, attributes": "outputs [B] or [B, D], protected attributes [B, A] -> scalar",
    "apply_fn, params, inputs, labels, environments": (
        "apply_fn(params, inputs) -> logits; labels [B] int, environments [B] int -> scalar"),
    "apply_fn, params, inputs, labels, environments, key": "as above, with a PRNG key",
    "reparameterization": "params (+ shape parameters) -> the effective params apply uses",
    "perturbation": ("constructor(**hparams) -> a perturbation for make_step(..., "
                     "perturbation=): the step's gradient is taken at w + delta"),
    "edit": ("fn(key, finetuned, base, **hparams) -> edited params (same tree as finetuned); "
             "mask= picks leaves (default: all)"),
    "edit search": ("fn(key, apply_fn, finetuned, base, inputs, **hparams) -> (q, objective); "
                    "apply_fn(params, inputs) -> outputs"),
    "merge": "fn(base, task_vectors (T pytrees like base), coefficients) -> merged params",
    "hypergradient": ("fn(train_loss, val_loss, params, hparams) -> dval_loss/dhparams (like "
                      "hparams); both losses (params, hparams) -> scalar"),
    "source, mapped": "source points [N, D], their images under a map [N, D] -> scalar",
    # Embedding losses (tests/losses/test_embedding_contract.py); batch-level ones take
    # axis_name and gather the global batch across devices.
    "z0, z1": ("two views [N, D] of one batch (row i of each a positive pair) -> loss [N], or "
               "a batch-level scalar"),
    "image, text, logit_scale": ("paired embeddings [N, D] and [N, D], a learned log inverse "
                                 "temperature -> loss [N]"),
    "views, labels": "features [N, V, D] (V views), labels [N] int or None -> loss [N]",
    "embeddings, labels": "embeddings [N, D], labels [N] int -> loss [N], or a scalar",
    "embeddings, labels, proxies": ("embeddings [N, D], labels [N] int, trained class proxies "
                                    "[K, D] -> scalar"),
    "anchors, positives, negatives": "anchors, positives, negatives [N, D] -> loss [N]",
    "features, centers, labels, state": ("as features, centers, labels, with running statistics "
                                         "-> (loss [B], new state)"),
    "utterances, w, b": ("embeddings [S speakers, U utterances, D], learned scale w > 0 and bias "
                         "b -> loss [S, U]"),
    "embeddings": "embeddings [N, D] -> loss [N], or a batch-level scalar",
    "z0, z1, z_mixed, ratio, permutation": (
        "two views [N, D], the embeddings of mixed inputs [N, D], the mixing ratio and the "
        "batch permutation mixed in -> scalar"),
    "views, key": "views [V, N, D], PRNG key (sub-batch permutations) -> scalar",
    "student, teacher, center": ("student [Vs, N, K] and teacher [Vt, N, K] logits, teacher "
                                 "center [K] -> (loss [N], new center)"),
    "scores": "prototype scores [V, N, K] of V views -> loss [N]",
    "encode, loss_fn, params, inputs": (
        "encode(params, inputs chunk) -> embeddings, loss_fn(params, embeddings) -> scalar, "
        "params, inputs batched on axis 0 -> (loss, gradient), one chunk's activations alive"),
}

# What an aggregator reads (``reads``), and so which make_step engines serve it.
READS = {
    "Gramian": "a weighting of G = J J^T: every engine, the Jacobian never formed by default",
    "values": "a scalarization: one backward pass of w^T f",
    "Jacobian": "needs J itself: make_step(engine='jacobian')",
}

# Properties an aggregator may claim (torchjd's definitions), checked by
# tests/multiobjective/test_contract.py on a zoo of Jacobians.
CLAIMS = {
    "non_conflicting": "J A(J) >= 0: no objective increases to first order",
    "permutation_invariant": "A(P J) = A(J) for any permutation P of the objectives",
    "linear_under_scaling": "c -> A(diag(c) J) is linear for c > 0",
}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One catalog row."""
    name: str
    fn: Callable
    family: str
    paper: str
    arxiv: str
    reference: str
    inputs: str = "logits, labels"
    hparams: Mapping[str, float] = dataclasses.field(default_factory=dict)
    provider: str = "jaxreg"
    stops_gradient: str = ""  # where the reference detaches a quantity (part of its definition)
    claims: tuple[str, ...] = ()  # aggregator properties, keys of CLAIMS

    def __post_init__(self):
        if self.inputs not in INPUT_KINDS:
            raise ValueError(f"Entry {self.name!r}: unknown inputs {self.inputs!r}; "
                             f"expected one of {sorted(INPUT_KINDS)}.")
        object.__setattr__(self, "hparams", MappingProxyType(dict(self.hparams)))
        unknown = set(self.claims) - set(CLAIMS)
        if unknown:
            raise ValueError(f"Entry {self.name!r}: unknown claims {sorted(unknown)}")


_POLY = "PolyLoss: A Polynomial Expansion Perspective of Classification Loss Functions (2022)"
_FOCAL = "Focal Loss for Dense Object Detection (2017)"
_APL = "Normalized Loss Functions for Deep Learning with Noisy Labels (2020)"
_APL_CODE = "HanxunH/Active-Passive-Losses loss.py"
_TORCHJD = "TorchJD/torchjd 0.18 aggregation"
_TORCHJD_SCALAR = "TorchJD/torchjd 0.18 scalarization"
_NASH = "Multi-Task Learning as a Bargaining Game (2022)"
_ADAMP = ("AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights "
          "(2021)")
_DECOUPLED = "Decoupled Weight Decay Regularization (2019)"
_IMBALANCE = ("Escaping Saddle Points for Effective Generalization on Class-Imbalanced Data "
              "(2022)")

_WEIGHTS = "regularizers/weights"
_OUTPUTS = "regularizers/outputs"
_DG = "regularizers/domain_generalization"
_SMOOTH = "regularizers/smoothness"
_FAIR = "regularizers/fairness"
_MULTITYPE = ("Machine Learning with Multitype Protected Attributes: Intersectional Fairness "
              "through Regularisation (2025)")
_ORTHOGONAL_CNN = ("Existence, Stability and Scalability of Orthogonal Convolutional Neural "
                   "Networks (2022)")
_REHEARSAL_FREE = "A Closer Look at Rehearsal-Free Continual Learning (2023)"
_DCL = "Decoupled Contrastive Learning (2022)"
_INF_CL = ("Breaking the Memory Barrier: Near Infinite Batch Size Scaling for Contrastive Loss "
           "(2024)")
_ALIGN_UNIFORM = ("Understanding Contrastive Representation Learning through Alignment and "
                  "Uniformity on the Hypersphere (2020)")

ENTRIES: tuple[Entry, ...] = (
    # -- Classification -------------------------------------------------------------------
    Entry("cross_entropy", classification.cross_entropy, "classification",
          "(baseline) softmax cross-entropy", "-",
          "optax.losses.softmax_cross_entropy_with_integer_labels", provider="optax"),
    Entry("poly1_cross_entropy", classification.poly1_cross_entropy, "classification",
          _POLY, "2204.12511", "optax.losses.poly_loss_cross_entropy (paper default epsilon=1)",
          hparams={"epsilon": 1.0}, provider="optax"),
    Entry("poly1_focal", classification.poly1_focal, "classification", _POLY, "2204.12511",
          "paper's poly1_focal_loss snippet on optax.sigmoid_focal_loss (alpha on the focal "
          "term only; default epsilon=1 as in third-party copies, not checked in the paper)",
          inputs="logits, targets", hparams={"epsilon": 1.0, "gamma": 2.0, "alpha": 0.25}),
    Entry("softmax_focal", classification.softmax_focal, "classification", _FOCAL,
          "1708.02002", "HanxunH/Active-Passive-Losses FocalLoss (clcarwin/focal_loss_pytorch) "
          "with stop_gradient_weight=True (it detaches the weight); default differentiates it",
          hparams={"gamma": 2.0}),
    Entry("sigmoid_focal", classification.sigmoid_focal, "classification", _FOCAL,
          "1708.02002", "optax.losses.sigmoid_focal_loss (torchvision sigmoid_focal_loss)",
          inputs="logits, targets", hparams={"alpha": 0.25, "gamma": 2.0}, provider="optax"),
    Entry("comp_sum", classification.comp_sum, "classification",
          "Cross-Entropy Loss Functions: Theoretical Analysis and Applications (2023)",
          "2304.07288", "paper, Eq. for comp-sum losses (no official code)",
          hparams={"tau": 1.5}),
    Entry("squentropy", classification.squentropy, "classification",
          "Cut your Losses with Squentropy (2023)", "2302.03952",
          "Like-Hui/Squentropy_vision (loss_type='sqen')", hparams={"weight": 1.0}),
    Entry("spherical_z_loss", classification.spherical_z_loss, "classification",
          "The Z-loss: a shift and scale invariant classification loss belonging to the "
          "Spherical Family (2016)", "1604.08859",
          "paper's definition (no official code; defaults a=0.1, b=20 not yet checked "
          "against the paper's experiments)",
          hparams={"a": 0.1, "b": 20.0}),
    Entry("encouraging", classification.encouraging, "classification",
          "Well-classified Examples are Underestimated in Classification with Deep Neural "
          "Networks (2022)", "2110.06537",
          "lancopku/well-classified-examples-are-underestimated (README)",
          hparams={"log_end": 0.75}),
    Entry("harmonic", classification.harmonic, "classification",
          "Harmonic Loss Trains Interpretable AI Models (2025)", "2502.01628",
          "KindXiaoming/grow-crystals DistLayer", inputs="features, centers, labels",
          hparams={"exponent": 1.0, "eps": 1e-4}),
    Entry("stablemax_cross_entropy", classification.stablemax_cross_entropy, "classification",
          "Grokking at the Edge of Numerical Stability (2025)", "2501.04697",
          "LucasPrietoAl/grokking-at-the-edge-of-numerical-stability stablemax"),
    Entry("ldam", classification.ldam, "classification", _IMBALANCE + "; LDAM: 1906.07413",
          "2212.13827", "kaidic/LDAM-DRW LDAMLoss", inputs="logits, labels, class_counts",
          hparams={"max_margin": 0.5, "scale": 30.0}),
    Entry("logit_adjusted", classification.logit_adjusted, "classification",
          _IMBALANCE + "; logit adjustment: 2007.07314", "2212.13827",
          "google-research/google-research logit_adjustment",
          inputs="logits, labels, class_counts", hparams={"tau": 1.0}),
    Entry("asymmetric", classification.asymmetric, "classification",
          "Asymmetric Loss For Multi-Label Classification (2020)", "2009.14119",
          "Alibaba-MIIL/ASL AsymmetricLoss (train.py settings)", inputs="logits, targets",
          hparams={"gamma_pos": 0.0, "gamma_neg": 4.0, "clip": 0.05},
          stops_gradient="the focusing weight (disable_torch_grad_focal_loss=True)"),
    Entry("label_distributionally_robust", classification.label_distributionally_robust,
          "classification",
          "Label Distributionally Robust Losses for Multi-class Classification: Consistency, "
          "Robustness and Adaptivity (2023)", "2112.14869",
          "Optimization-AI/ICML2023_LDR loss.py LDRLoss_V1 (experiment.py margin 0.1)",
          hparams={"lam": 1.0, "margin": 0.1}),
    # -- Noisy labels ---------------------------------------------------------------------
    Entry("generalized_cross_entropy", noisy_labels.generalized_cross_entropy, "noisy_labels",
          "Generalized Cross Entropy Loss for Training Deep Neural Networks with Noisy Labels "
          "(2018)", "1805.07836", _APL_CODE + " GeneralizedCrossEntropy", hparams={"q": 0.7}),
    Entry("reverse_cross_entropy", noisy_labels.reverse_cross_entropy, "noisy_labels",
          "Symmetric Cross Entropy for Robust Learning with Noisy Labels (2019)", "1908.06112",
          _APL_CODE + " ReverseCrossEntropy"),
    Entry("symmetric_cross_entropy", noisy_labels.symmetric_cross_entropy, "noisy_labels",
          "Symmetric Cross Entropy for Robust Learning with Noisy Labels (2019)", "1908.06112",
          _APL_CODE + " SCELoss", hparams={"alpha": 0.1, "beta": 1.0}),
    Entry("mae", noisy_labels.mae, "noisy_labels", _APL, "2006.13554",
          _APL_CODE + " MeanAbsoluteError"),
    Entry("normalized_cross_entropy", noisy_labels.normalized_cross_entropy, "noisy_labels",
          _APL, "2006.13554", _APL_CODE + " NormalizedCrossEntropy"),
    Entry("normalized_focal", noisy_labels.normalized_focal, "noisy_labels", _APL,
          "2006.13554", _APL_CODE + " NormalizedFocalLoss", hparams={"gamma": 0.5},
          stops_gradient="every (1 - p)^gamma weight"),
    Entry("normalized_generalized_cross_entropy",
          noisy_labels.normalized_generalized_cross_entropy, "noisy_labels", _APL,
          "2006.13554", _APL_CODE + " NormalizedGeneralizedCrossEntropy", hparams={"q": 0.7}),
    Entry("active_passive", noisy_labels.active_passive, "noisy_labels", _APL, "2006.13554",
          _APL_CODE + " NCEandRCE, NCEandMAE, NFLandRCE, ...",
          hparams={"alpha": 1.0, "beta": 1.0}),
    Entry("elr", noisy_labels.elr, "noisy_labels",
          "Early-Learning Regularization Prevents Memorization of Noisy Labels (2020)",
          "2007.00151", "shengliu66/ELR ELR/model/loss.py elr_loss",
          inputs="logits, labels, example_state", hparams={"beta": 0.7, "lam": 3.0},
          stops_gradient="the probabilities entering the EMA target"),
    Entry("progressive_self_distillation", self_distillation.progressive_self_distillation,
          "noisy_labels",
          "Self-Knowledge Distillation with Progressive Refinement of Targets (2021)",
          "2006.12000", "lgcnsai/PS-KD-Pytorch loss/pskd_loss.py and main.py (targets, alpha_t)",
          inputs="logits, labels, example_state", hparams={"alpha": 0.8}),
    # -- Contrastive ----------------------------------------------------------------------
    Entry("info_nce", contrastive.info_nce, "contrastive",
          "Representation Learning with Contrastive Predictive Coding (2018)", "1807.03748",
          "RElbers/info-nce-pytorch InfoNCE (no negative keys); symmetric=True: open_clip "
          "ClipLoss at logit scale 1/T", inputs="z0, z1", hparams={"temperature": 0.07}),
    Entry("clip", contrastive.clip, "contrastive",
          "Improved baselines for vision-language pre-training (2023)", "2305.16999",
          "mlfoundations/open_clip src/open_clip/loss.py ClipLoss (logit scale clamped at "
          "log 100 as its training loop)", inputs="image, text, logit_scale",
          hparams={"max_logit_scale": math.log(100.0)}),
    Entry("supervised_contrastive", contrastive.supervised_contrastive, "contrastive",
          "Supervised Contrastive Learning (2020)", "2004.11362",
          "HobbitLong/SupContrast losses.py SupConLoss (L_out, T/base_T); base_temperature=None:"
          " pytorch-metric-learning 2.9 SupConLoss", inputs="views, labels",
          hparams={"temperature": 0.07, "base_temperature": 0.07}),
    Entry("ntxent", optax.losses.ntxent, "contrastive",
          "A Simple Framework for Contrastive Learning of Visual Representations (2020)",
          "2002.05709", "optax.losses.ntxent (= lightly 1.6 NTXentLoss with the views as labels)",
          inputs="embeddings, labels", hparams={"temperature": 0.07}, provider="optax"),
    Entry("decoupled_contrastive", contrastive.decoupled_contrastive, "contrastive",
          _DCL, "2110.06848", "lightly 1.6 DCLLoss", inputs="z0, z1",
          hparams={"temperature": 0.1}),
    Entry("decoupled_contrastive_weighted", contrastive.decoupled_contrastive_weighted,
          "contrastive", _DCL, "2110.06848", "lightly 1.6 DCLWLoss", inputs="z0, z1",
          hparams={"temperature": 0.1, "sigma": 0.5},
          stops_gradient="the von Mises-Fisher weights of the positives (as lightly)"),
    Entry("alignment", contrastive.alignment, "contrastive", _ALIGN_UNIFORM, "2005.10242",
          "SsnL/align_uniform align_loss", inputs="z0, z1", hparams={"alpha": 2.0}),
    Entry("uniformity", contrastive.uniformity, "contrastive", _ALIGN_UNIFORM, "2005.10242",
          "SsnL/align_uniform uniform_loss (t=2; lightly HypersphereLoss uses t=1)",
          inputs="embeddings", hparams={"t": 2.0}),
    Entry("chunked_info_nce", chunked.chunked_info_nce, "contrastive", _INF_CL, "2410.17243",
          "jaxreg info_nce (dense): equal values and gradients in O(N chunk) memory",
          inputs="z0, z1", hparams={"temperature": 0.07}),
    Entry("chunked_supervised_contrastive", chunked.chunked_supervised_contrastive,
          "contrastive", _INF_CL, "2410.17243",
          "jaxreg supervised_contrastive (dense; = HobbitLong/SupContrast SupConLoss)",
          inputs="views, labels", hparams={"temperature": 0.07, "base_temperature": 0.07}),
    Entry("chunked_decoupled_contrastive", chunked.chunked_decoupled_contrastive, "contrastive",
          _INF_CL, "2410.17243", "jaxreg decoupled_contrastive (dense; = lightly 1.6 DCLLoss)",
          inputs="z0, z1", hparams={"temperature": 0.1}),
    Entry("gradient_cache", chunked.gradient_cache, "contrastive",
          "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup (2021)",
          "2101.06983", "jax.value_and_grad of the whole batch (luyug/GradCache's procedure)",
          inputs="encode, loss_fn, params, inputs"),
    # -- Metric learning and margin softmax ------------------------------------------------
    Entry("pair_contrastive", contrastive.pair_contrastive, "metric",
          "Dimensionality Reduction by Learning an Invariant Mapping (2006)", "-",
          "pytorch-metric-learning 2.9 ContrastiveLoss (LpDistance, AvgNonZeroReducer)",
          inputs="embeddings, labels", hparams={"pos_margin": 0.0, "neg_margin": 1.0}),
    Entry("triplet", optax.losses.triplet_margin_loss, "metric",
          "Learning local feature descriptors with triplets and shallow convolutional neural "
          "networks (2016)", "-", "optax.losses.triplet_margin_loss (= torch.nn."
          "TripletMarginLoss up to where eps enters)", inputs="anchors, positives, negatives",
          hparams={"margin": 1.0}, provider="optax"),
    Entry("circle", metric.circle, "metric",
          "Circle Loss: A Unified Perspective of Pair Similarity Optimization (2020)",
          "2002.10857", "pytorch-metric-learning 2.9 CircleLoss", inputs="embeddings, labels",
          hparams={"margin": 0.4, "gamma": 80.0},
          stops_gradient="the pair weights alpha_p, alpha_n (as the paper and PML)"),
    Entry("multi_similarity", metric.multi_similarity, "metric",
          "Multi-Similarity Loss with General Pair Weighting for Deep Metric Learning (2019)",
          "1904.06627", "pytorch-metric-learning 2.9 MultiSimilarityLoss (no miner)",
          inputs="embeddings, labels", hparams={"alpha": 2.0, "beta": 50.0, "base": 0.5}),
    Entry("proxy_anchor", metric.proxy_anchor, "metric",
          "Proxy Anchor Loss for Deep Metric Learning (2020)", "2003.13911",
          "pytorch-metric-learning 2.9 ProxyAnchorLoss", inputs="embeddings, labels, proxies",
          hparams={"margin": 0.1, "alpha": 32.0}),
    Entry("additive_margin_softmax", metric.additive_margin_softmax, "metric",
          "Additive Margin Softmax for Face Verification (2018)", "1801.05599",
          "pytorch-metric-learning 2.9 CosFaceLoss(margin=0.35, scale=30)",
          inputs="features, centers, labels", hparams={"scale": 30.0, "margin": 0.35}),
    Entry("cosface", metric.cosface, "metric",
          "CosFace: Large Margin Cosine Loss for Deep Face Recognition (2018)", "1801.09414",
          "pytorch-metric-learning 2.9 CosFaceLoss (insightface CosFace: margin 0.40)",
          inputs="features, centers, labels", hparams={"scale": 64.0, "margin": 0.35}),
    Entry("arcface", metric.arcface, "metric",
          "ArcFace: Additive Angular Margin Loss for Deep Face Recognition (2019)", "1801.07698",
          "insightface arcface_torch losses.py ArcFace (margin in radians; PML ArcFaceLoss "
          "takes degrees)", inputs="features, centers, labels",
          hparams={"scale": 64.0, "margin": 0.5}),
    Entry("adaface", metric.adaface, "metric",
          "AdaFace: Quality Adaptive Margin for Face Recognition (2022)", "2204.00964",
          "mk-minchul/AdaFace head.py AdaFace (class defaults)",
          inputs="features, centers, labels, state",
          hparams={"margin": 0.4, "h": 0.333, "scale": 64.0, "t_alpha": 1.0},
          stops_gradient="the feature norms, their running statistics and the margin scaler"),
    Entry("ge2e", metric.ge2e, "metric",
          "Generalized End-to-End Loss for Speaker Verification (2018)", "1710.10467",
          "CorentinJ/Real-Time-Voice-Cloning encoder/model.py (softmax); contrast variant from "
          "the paper", inputs="utterances, w, b"),
    # -- Self-supervised (non-contrastive) ---------------------------------------------------
    Entry("barlow_twins", self_supervised.barlow_twins, "self_supervised",
          "Barlow Twins: Self-Supervised Learning via Redundancy Reduction (2021)", "2103.03230",
          "facebookresearch/barlowtwins main.py (lambd 0.0051); lightly 1.6 BarlowTwinsLoss "
          "(5e-3)", inputs="z0, z1", hparams={"lambda_": 0.0051, "eps": 1e-5}),
    Entry("mixed_barlow_twins", self_supervised.mixed_barlow_twins, "self_supervised",
          "Guarding Barlow Twins Against Overfitting with Mixed Samples (2023)", "2312.02151",
          "wgcban/mix-bt main.py (its CIFAR-10 defaults)",
          inputs="z0, z1, z_mixed, ratio, permutation",
          hparams={"lambda_": 0.0078125, "mixed_lambda": 4.0}),
    Entry("vicreg", self_supervised.vicreg, "self_supervised",
          "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning "
          "(2022)", "2105.04906", "facebookresearch/vicreg main_vicreg.py (= lightly 1.6 "
          "VICRegLoss)", inputs="z0, z1",
          hparams={"sim_coeff": 25.0, "std_coeff": 25.0, "cov_coeff": 1.0, "eps": 1e-4}),
    Entry("w_mse", self_supervised.w_mse, "self_supervised",
          "Whitening for Self-Supervised Representation Learning (2021)", "2007.06346",
          "htdt/self-supervised methods/w_mse.py and whitening.py (lightly 1.6 WMSELoss)",
          inputs="views, key", hparams={"eps": 0.0}),
    Entry("negative_cosine", self_supervised.negative_cosine, "self_supervised",
          "Exploring Simple Siamese Representation Learning (2021)", "2011.10566",
          "lightly 1.6 NegativeCosineSimilarity (which does not detach: stop_gradient=False)",
          inputs="z0, z1", hparams={"eps": 1e-8},
          stops_gradient="the targets (the SimSiam / BYOL stop-gradient)"),
    Entry("dino", self_supervised.dino, "self_supervised",
          "Emerging Properties in Self-Supervised Vision Transformers (2021)", "2104.14294",
          "lightly 1.6 DINOLoss", inputs="student, teacher, center",
          hparams={"student_temperature": 0.1, "teacher_temperature": 0.04,
                   "center_momentum": 0.9},
          stops_gradient="the teacher and its center"),
    Entry("swav", self_supervised.swav, "self_supervised",
          "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments (2020)",
          "2006.09882", "lightly 1.6 SwaVLoss (its Sinkhorn-Knopp, in log space)",
          inputs="scores", hparams={"temperature": 0.1, "sinkhorn_epsilon": 0.05},
          stops_gradient="the Sinkhorn-Knopp codes"),
    Entry("koleo", self_supervised.koleo, "self_supervised",
          "Spreading vectors for similarity search (2019)", "1806.03198",
          "lightly 1.6 KoLeoLoss", inputs="embeddings", hparams={"eps": 1e-8}),
    # -- Multi-objective aggregation ------------------------------------------------------
    Entry("mean", weighted.mean, "multiobjective", "(baseline) average of the gradients", "-",
          _TORCHJD + " Mean", inputs="jacobian",
          claims=("permutation_invariant", "linear_under_scaling")),
    Entry("sum", weighted.sum, "multiobjective", "(baseline) gradient of the summed losses", "-",
          _TORCHJD + " Sum", inputs="jacobian",
          claims=("permutation_invariant", "linear_under_scaling")),
    Entry("random_weighting", weighted.random_weighting, "multiobjective",
          "Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task Learning "
          "(2022)", "2111.10603", _TORCHJD + " Random", inputs="jacobian"),
    Entry("imtl_g", weighted.imtl_g, "multiobjective",
          "Towards Impartial Multi-task Learning (ICLR 2021, gradient part)", "-",
          _TORCHJD + " IMTLG; AvivNavon/nash-mtl IMTLG", inputs="jacobian",
          claims=("permutation_invariant",)),
    Entry("aligned_mtl", weighted.aligned_mtl, "multiobjective",
          "Independent Component Alignment for Multi-Task Learning (2023)", "2305.19000",
          _TORCHJD + " AlignedMTL", inputs="jacobian", claims=("permutation_invariant",)),
    Entry("pcgrad", surgery.pcgrad, "multiobjective",
          "Gradient Surgery for Multi-Task Learning (2020)", "2001.06782",
          _TORCHJD + " PCGrad (Gramian form)", inputs="jacobian",
          claims=("linear_under_scaling",)),
    Entry("graddrop", surgery.graddrop, "multiobjective",
          "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout "
          "(2020)", "2010.06808", _TORCHJD + " GradDrop (on parameter gradients)",
          inputs="jacobian", hparams={"leak": 0.0}),
    Entry("mgda", min_norm.mgda, "multiobjective",
          "Multi-Task Learning as Multi-Objective Optimization (2018); MGDA-UB via "
          "make_step(representation=...)", "1810.04650", _TORCHJD + " MGDA (Frank-Wolfe)",
          inputs="jacobian", claims=("non_conflicting", "permutation_invariant")),
    Entry("cagrad", min_norm.cagrad, "multiobjective",
          "Conflict-Averse Gradient Descent for Multi-task Learning (2021)", "2110.14048",
          _TORCHJD + " CAGrad (rescale=0); Cranial-XIX/CAGrad rescale=1",
          inputs="jacobian", hparams={"c": 0.5}, claims=("permutation_invariant",)),
    Entry("upgrad", dual_cone.upgrad, "multiobjective",
          "Jacobian Descent for Multi-Objective Optimization (2024)", "2406.16232",
          _TORCHJD + " UPGrad", inputs="jacobian",
          claims=("non_conflicting", "permutation_invariant", "linear_under_scaling")),
    Entry("dualproj", dual_cone.dualproj, "multiobjective",
          "Jacobian Descent for Multi-Objective Optimization (2024)", "2406.16232",
          _TORCHJD + " DualProj", inputs="jacobian",
          claims=("non_conflicting", "permutation_invariant")),
    Entry("config", conflict_free.config, "multiobjective",
          "ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks (2024)",
          "2408.11104", "tum-pbs/ConFIG conflictfree ConFIG_update; " + _TORCHJD + " ConFIG",
          inputs="jacobian", claims=("permutation_invariant", "linear_under_scaling")),
    Entry("momentum_config", conflict_free.momentum_config, "multiobjective",
          "ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks (2024)",
          "2408.11104", "tum-pbs/ConFIG conflictfree PseudoMomentumOperator (all losses "
          "every step)", inputs="jacobian", hparams={"beta1": 0.9, "beta2": 0.999}),
    Entry("bloop", auxiliary.bloop, "multiobjective",
          "Careful with that Scalpel: Improving Gradient Surgery with an EMA (2024)",
          "2402.02998", "apple/ml-bloop bloop_direction (EMA init zeros, rescale=False)",
          inputs="jacobian", hparams={"lbda": 0.1, "ema": 0.1}),
    Entry("multi_adam", multi_adam, "multiobjective",
          "MultiAdam: Parameter-wise Scale-invariant Optimizer for Multiscale Training of "
          "Physics-informed Neural Networks (2023)", "2306.02816",
          "i207M/PINNacle src/optimizer/multiadam.py (betas 0.99, eps 1e-8)",
          inputs="jacobian", hparams={"learning_rate": 1e-3, "b1": 0.99, "b2": 0.99}),
    Entry("gradvac", vaccine.gradvac, "multiobjective",
          "Gradient Vaccine: Investigating and Improving Multi-task Optimization in Massively "
          "Multilingual Models (2021)", "2010.05874", _TORCHJD + " GradVac (whole model)",
          inputs="jacobian", hparams={"beta": 0.5}),
    Entry("nash_mtl", bargaining.nash_mtl, "multiobjective", _NASH, "2202.01017",
          _TORCHJD + " NashMTL; AvivNavon/nash-mtl (fixed point; Newton solver)",
          inputs="jacobian", hparams={"max_norm": 1.0},
          claims=("non_conflicting", "permutation_invariant")),
    Entry("auxinash", bargaining.auxinash, "multiobjective",
          "Auxiliary Learning as an Asymmetric Bargaining Game (2023)", "2301.13501",
          "AvivSham/auxinash AuxiNash (fixed preference; its hypergradient is not implemented)",
          inputs="jacobian", hparams={"max_norm": 1.0}),
    Entry("gradnorm", loss_weighting.gradnorm, "multiobjective",
          "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep Multitask "
          "Networks (2018)", "1711.02257",
          "the paper's Eqs. 1-3 (weights renormalised to sum m; LibMTL GradNorm uses a softmax "
          "parameterisation instead)", inputs="jacobian, values", hparams={"alpha": 1.5},
          stops_gradient="the target G_bar r^alpha is a constant in L_grad (Eq. 3)"),
    Entry("uncertainty_weighting", loss_weighting.uncertainty_weighting, "multiobjective",
          "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry and "
          "Semantics (2018)", "1705.07115",
          "the paper's Eqs. 7 and 10 with s = log sigma^2 (LibMTL UW: Eq. 7 for every task)",
          inputs="objective"),
    Entry("fairgrad", balancing.fairgrad, "multiobjective",
          "Fair Resource Allocation in Multi-Task Learning (2024)", "2402.15638",
          _TORCHJD + " FairGrad (where G w = w^(-1/alpha) has a root, else a zero "
          "update; Newton solver)",
          inputs="jacobian", hparams={"alpha": 2.0},
          claims=("non_conflicting", "permutation_invariant")),
    Entry("excess_mtl", balancing.excess_mtl, "multiobjective",
          "Robust Multi-Task Learning with Excess Risks (2024)", "2402.02009",
          _TORCHJD + " ExcessMTL", inputs="jacobian", hparams={"robust_step_size": 1.0},
          claims=("permutation_invariant",)),
    Entry("pcd", priority.pcd, "multiobjective",
          "Not All Objectives Are Born Equal: Priority-Constrained Descent for Hierarchical "
          "Multi-Objective Optimization (2026)", "2606.29521", _TORCHJD + " PCD",
          inputs="jacobian", hparams={"tau": 0.02, "beta": 0.999}),
    Entry("cr_mogm", stochastic.cr_mogm, "multiobjective",
          "On the Convergence of Stochastic Multi-Objective Gradient Manipulation and Beyond "
          "(2022)", "-", _TORCHJD + " CRMOGMWeighting (around MGDA's weighting by default)",
          inputs="jacobian", hparams={"alpha": 0.9}),
    Entry("modo", stochastic.modo, "multiobjective",
          "Three-Way Trade-Off in Multi-Objective Learning: Optimization, Generalization and "
          "Conflict-Avoidance (2023)", "2305.20057",
          _TORCHJD + " MoDoWeighting (on the step's Gramian)", inputs="jacobian",
          hparams={"gamma": 0.1, "rho": 0.1}, claims=("permutation_invariant",)),
    Entry("sdmgrad", stochastic.sdmgrad, "multiobjective",
          "Direction-oriented Multi-objective Learning: Simple and Provable Stochastic "
          "Algorithms (2023)", "2305.18409",
          _TORCHJD + " SDMGradWeighting (on the step's Gramian)", inputs="jacobian",
          hparams={"lr": 10.0, "momentum": 0.5, "lambda_": 0.3},
          claims=("permutation_invariant",)),
    Entry("krum", robust.krum, "multiobjective",
          "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent (2017)",
          "1703.02757", _TORCHJD + " Krum (n_byzantine=0 by default)", inputs="jacobian"),
    Entry("trimmed_mean", robust.trimmed_mean, "multiobjective",
          "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates (2018)",
          "1803.01498", _TORCHJD + " TrimmedMean (trim_number=1 by default)",
          inputs="jacobian", claims=("permutation_invariant",)),
    Entry("famo", scalarization.famo, "multiobjective",
          "FAMO: Fast Adaptive Multitask Optimization (2023)", "2306.03792",
          _TORCHJD_SCALAR + " FAMO (its update() from the next step's values)",
          inputs="jacobian, values", hparams={"lr": 0.025, "weight_decay": 1e-3}),
    Entry("dwa", scalarization.dwa, "multiobjective",
          "End-to-End Multi-Task Learning with Attention (2019)", "1803.10704",
          _TORCHJD_SCALAR + " DWA (step() every steps_per_epoch steps)",
          inputs="jacobian, values", hparams={"temperature": 2.0}),
    Entry("stch", scalarization.stch, "multiobjective",
          "Smooth Tchebycheff Scalarization for Multi-Objective Optimization (2024)",
          "2402.19078", _TORCHJD_SCALAR + " STCH (mu=1 by default)",
          inputs="jacobian, values", hparams={"mu": 1.0}),
    Entry("geometric_mean", scalarization.geometric_mean, "multiobjective",
          "MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss Strategy for "
          "Multi-Task Learning (2019)", "1904.08492", _TORCHJD_SCALAR + " GeometricMean",
          inputs="jacobian, values"),
    Entry("pbi", scalarization.pbi, "multiobjective",
          "MOEA/D: A Multiobjective Evolutionary Algorithm Based on Decomposition (2007)", "-",
          _TORCHJD_SCALAR + " PBI (uniform preference by default)",
          inputs="jacobian, values", hparams={"theta": 5.0}),
    Entry("fork_merge", fork_merge, "multiobjective",
          "ForkMerge: Mitigating Negative Transfer in Auxiliary-Task Learning (2023)",
          "2301.12618", "thuml/ForkMerge forkmerge.py (greedy lambda search; per-round best "
          "checkpoints)", inputs="procedure"),
    Entry("adamp", scale_invariant.adamp, "optim", _ADAMP, "2006.08217",
          "clovaai/AdamP adamp 0.3.0 AdamP (channel axis last for Flax kernels)",
          inputs="transformation",
          hparams={"learning_rate": 1e-3, "weight_decay": 0.1, "delta": 0.1, "wd_ratio": 0.1}),
    Entry("sgdp", scale_invariant.sgdp, "optim", _ADAMP, "2006.08217",
          "clovaai/AdamP adamp 0.3.0 SGDP (momentum buffer keeps the projection, as there)",
          inputs="transformation",
          hparams={"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 1e-4}),
    Entry("ademamix", optax.contrib.ademamix, "optim",
          "The AdEMAMix Optimizer: Better, Faster, Older (2024)", "2409.03137",
          "optax.contrib.ademamix", provider="optax", inputs="transformation",
          hparams={"learning_rate": 1e-3, "alpha": 5.0, "b3": 0.9999}),
    Entry("momo", optax.contrib.momo, "optim",
          "MoMo: Momentum Models for Adaptive Learning Rates (2024)", "2305.07583",
          "optax.contrib.momo (needs the loss `value`; make_step passes it)", provider="optax",
          inputs="transformation", hparams={"learning_rate": 1.0}),
    Entry("gravity", gravity, "optim",
          "Gravity Optimizer: a Kinematic Approach on Optimization in Deep Learning (2021)",
          "2101.09192", "dariush-bahrami/gravity.optimizer (Keras; first step t=0)",
          inputs="transformation", hparams={"learning_rate": 0.1, "alpha": 0.01}),
    Entry("adamw", optax.adamw, "optim", _DECOUPLED, "1711.05101",
          "optax.adamw (decay scaled by the learning rate, as PyTorch)", provider="optax",
          inputs="transformation", hparams={"learning_rate": 1e-3, "weight_decay": 1e-4}),
    Entry("decoupled_weight_decay", weight_decay_lib.decoupled_weight_decay, "optim",
          _DECOUPLED, "1711.05101", "the paper's Algorithm 2 line 12 (decay scaled by the "
          "schedule multiplier only)", inputs="transformation", hparams={"weight_decay": 0.1}),
    Entry("decay_to_anchor", weight_decay_lib.decay_to_anchor, "optim",
          "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a "
          "Free Lunch (2024)", "2311.03099", "AdamR: decoupled decay toward the anchor weights",
          inputs="transformation", hparams={"weight_decay": 0.1}),
    Entry("orthogonal_gradient", weight_decay_lib.orthogonal_gradient, "optim",
          "Grokking at the Edge of Numerical Stability (2025)", "2501.04697",
          "LucasPrietoAl/grokking-at-the-edge-of-numerical-stability orthograd.py (per tensor, "
          "rescaled to the gradient's norm)", inputs="transformation"),
    Entry("prox_l1", proximal.prox_l1, "optim",
          "A Fast Iterative Shrinkage-Thresholding Algorithm for Linear Inverse Problems "
          "(2009)", "-", "ISTA's soft thresholding (Beck & Teboulle, Eq. 1.4)",
          inputs="transformation", hparams={"strength": 0.1, "learning_rate": 0.1}),
    Entry("prox_group_lasso", proximal.prox_group_lasso, "optim",
          "Model selection and estimation in regression with grouped variables (2006)", "-",
          "group soft thresholding, one group per output unit (unweighted)",
          inputs="transformation", hparams={"strength": 0.1, "learning_rate": 0.1}),
    # -- Regularizers: strength * penalty (tests/regularizers/test_contract.py) --------------
    Entry("l1", weights.l1, _WEIGHTS, "(baseline) L1 penalty", "-", "strength * sum |w|",
          inputs="params", hparams={"strength": 1.0}),
    Entry("l2", weights.l2, _WEIGHTS, _DECOUPLED, "1711.05101",
          "strength / 2 * sum w^2 (gradient strength * w, SGD's coupled weight decay)",
          inputs="params", hparams={"strength": 1.0}),
    Entry("group_lasso", weights.group_lasso, _WEIGHTS,
          "Model selection and estimation in regression with grouped variables (2006)", "-",
          "strength * sum_g ||w_g||, one group per output unit (as prox_group_lasso)",
          inputs="params", hparams={"strength": 1.0}),
    Entry("orthogonality", weights.orthogonality, _WEIGHTS, _ORTHOGONAL_CNN, "2108.05623",
          "deel-ai/deel-lip LorthRegularizer (conv, minus max(0, M - S^2 C)) and "
          "OrthDenseRegularizer (dense, smaller Gram)", inputs="params",
          hparams={"strength": 1.0}),
    Entry("spectral_norm", weights.spectral_norm, _WEIGHTS,
          "Spectral Norm Regularization for Improving the Generalizability of Deep Learning "
          "(2017)", "1705.10941", "paper Eq. 6 (strength / 2 * sum sigma^2; power iteration "
          "from a fixed start, no persistent vector)", inputs="params",
          hparams={"strength": 1.0}),
    Entry("l2_to_anchor", weights.l2_to_anchor, _WEIGHTS, _REHEARSAL_FREE + "; L2-SP: "
          "1802.01483", "2203.17269", "L2-SP Eq. 3, strength / 2 * ||w - w0||^2",
          inputs="params, anchor", hparams={"strength": 1.0}),
    Entry("ewc", weights.ewc, _WEIGHTS, _REHEARSAL_FREE + "; EWC: 1612.00796", "2203.17269",
          "Kirkpatrick et al. Eq. 3 with the diagonal Fisher (diagonal_fisher)",
          inputs="params, anchor, fisher", hparams={"strength": 1.0}),
    Entry("soft_equivariance", equivariance.soft_equivariance, _WEIGHTS,
          "Regularizing Towards Soft Equivariance Under Mixed Symmetries (2023)", "2306.00356",
          "kim-hyunsu/PER equiv_regularizer (softemlp, mse; EMLP projectors)",
          inputs="params, projectors", hparams={"strength": 1.0}),
    Entry("lora_orthogonality", lora.lora_orthogonality, _WEIGHTS,
          "Learn to Preserve and Diversify: Parameter-Efficient Group with Orthogonal "
          "Regularization for Domain Generalization (2024)", "2407.15085",
          "JudgingH/PEGO domainbed/algorithms/algorithms.py (PEGO.update; run.sh --ld 1e-3)",
          inputs="lora_a, lora_b, pretrained",
          hparams={"strength": 1e-3, "preserve": 1.0, "diversify": 1.0}),
    Entry("weight_compander", reparameterization.weight_compander, _WEIGHTS,
          "Weight Compander: A Simple Weight Reparameterization for Regularization (2023)",
          "2306.16993", "the paper (IJCNN 2023 version; no official code): Eq. 1 "
          "a*arctan(v/b) on kernels only, a=b=1 (Fig. 2); learned per-layer shapes start at "
          "a=0.5, b=1 (init_shape_params)", inputs="reparameterization",
          hparams={"a": 1.0, "b": 1.0}),
    Entry("logit_z_loss", outputs.logit_z_loss, _OUTPUTS,
          "PaLM: Scaling Language Modeling with Pathways (2022)", "2204.02311",
          "strength * logsumexp(logits)^2 (PaLM's z-loss, 1e-4)", inputs="logits",
          hparams={"strength": 1e-4}),
    Entry("confidence_penalty", outputs.confidence_penalty, _OUTPUTS,
          "Regularizing Neural Networks by Penalizing Confident Output Distributions (2017)",
          "1701.06548", "paper Eq. 2 (-beta H(p))", inputs="logits",
          hparams={"strength": 0.1}),
    Entry("entropy_minimization", outputs.entropy_minimization, _OUTPUTS,
          "Semi-supervised Learning by Entropy Minimization (2004)", "-",
          "paper Eq. 5 (lambda H(p) on unlabelled inputs)", inputs="logits",
          hparams={"strength": 1.0}),
    Entry("flooding", outputs.flooding, _OUTPUTS,
          "Do We Need Zero Training Loss After Achieving Zero Training Error? (2020)",
          "2002.08709", "paper Eq. 2, |J - b| + b on the batch mean (no default level: the "
          "value here is for the tests)", inputs="loss", hparams={"level": 0.5}),
    Entry("knowledge_distillation", outputs.knowledge_distillation, _OUTPUTS,
          "Distilling the Knowledge in a Neural Network (2015)", "1503.02531",
          "T^2 KL(softmax(t/T) || softmax(s/T)) (teacher detached)",
          inputs="student, teacher", hparams={"strength": 1.0, "temperature": 4.0}),
    Entry("feature_distillation", outputs.feature_distillation, _OUTPUTS,
          "FitNets: Hints for Thin Deep Nets (2015)", "1412.6550",
          "hint loss Eq. 2, strength / 2 * ||f_s - f_t||^2 (teacher detached)",
          inputs="student, teacher", hparams={"strength": 1.0}),
    Entry("irm_penalty", domain_generalization.irm_penalty, _DG,
          "Invariant Risk Minimization (2019)", "1907.02893",
          "facebookresearch/InvariantRiskMinimization (unbiased=True: DomainBed IRM)",
          inputs="apply_fn, params, inputs, labels, environments",
          hparams={"strength": 100.0}),
    Entry("vrex_penalty", domain_generalization.vrex_penalty, _DG,
          "Out-of-Distribution Generalization via Risk Extrapolation (REx) (2021)",
          "2003.00688", "facebookresearch/DomainBed VREx",
          inputs="apply_fn, params, inputs, labels, environments", hparams={"strength": 10.0}),
    Entry("fishr_penalty", domain_generalization.fishr_penalty, _DG,
          "Fishr: Invariant Gradient Variances for Out-of-Distribution Generalization (2022)",
          "2109.02934", "alexrame/fishr (first step: no EMA; coordinate_mean=True as "
          "l2_between_dicts)", inputs="apply_fn, params, inputs, labels, environments",
          hparams={"strength": 1000.0}),
    Entry("hessian_alignment", domain_generalization.hessian_alignment, _DG,
          "Understanding Hessian Alignment for Domain Generalization (2023)", "2308.11778",
          "huawei-noah/Federated-Learning HessianAlignment HGP (estimator='hutchinson' with a "
          "key: its Hutchinson)", inputs="apply_fn, params, inputs, labels, environments",
          hparams={"strength": 1.0, "alpha": 1e-4, "beta": 5e-3}),
    Entry("virtual_adversarial", smoothness.virtual_adversarial, _SMOOTH,
          "Virtual Adversarial Training: A Regularization Method for Supervised and "
          "Semi-Supervised Learning (2018)", "1704.03976",
          "takerum/vat_tf vat.py (epsilon=8, xi=1e-6, one power iteration, stop-gradients)",
          inputs="apply_fn, params, inputs, key",
          hparams={"strength": 1.0, "epsilon": 8.0, "xi": 1e-6},
          stops_gradient="the adversarial direction and the clean prediction (as vat_tf)"),
    Entry("input_gradient_penalty", smoothness.input_gradient_penalty, _SMOOTH,
          "Improving the Adversarial Robustness and Interpretability of Deep Neural Networks "
          "by Regularizing their Input Gradients (2018)", "1711.09404",
          "strength * mean ||grad_x s(f(x))||^2 (double backpropagation with output_fn=loss)",
          inputs="apply_fn, params, inputs", hparams={"strength": 1.0}),
    Entry("jacobian_penalty", smoothness.jacobian_penalty, _SMOOTH,
          "What Regularized Auto-Encoders Learn from the Data-Generating Distribution (2014)",
          "1211.4246", "contractive penalty mean ||J_f(x)||_F^2 by Rademacher projections "
          "(one VJP each; exact=True: one per output)", inputs="apply_fn, params, inputs, key",
          hparams={"strength": 1.0}),
    Entry("r1_penalty", smoothness.r1_penalty, _SMOOTH,
          "The GAN is dead; long live the GAN! A Modern GAN Baseline (2024)", "2501.05441",
          "R3GAN Trainer.py ZeroCenteredGradientPenalty on real samples, gamma / 2 (R1: "
          "1801.04406)", inputs="apply_fn, params, inputs", hparams={"strength": 1.0}),
    Entry("r2_penalty", smoothness.r2_penalty, _SMOOTH,
          "The GAN is dead; long live the GAN! A Modern GAN Baseline (2024)", "2501.05441",
          "R3GAN Trainer.py ZeroCenteredGradientPenalty on generated samples, gamma / 2",
          inputs="apply_fn, params, inputs", hparams={"strength": 1.0}),
    Entry("hessian_trace_penalty", smoothness.hessian_trace_penalty, _SMOOTH,
          "Regularizing Deep Neural Networks with Stochastic Estimators of Hessian Trace "
          "(2022)", "2208.05924", "Hutchinson's tr(H) by Hessian-vector products "
          "(jaxreg.diagnostics.hessian; no layer subsampling)", inputs="loss_fn, params, key",
          hparams={"strength": 1.0}),
    Entry("mixup", smoothness.mixup, _SMOOTH,
          "mixup: Beyond Empirical Risk Minimization (2018)", "1710.09412",
          "facebookresearch/mixup-cifar10 train.py mixup_data (one Beta(alpha, alpha) lam per "
          "batch, alpha=1); the MixUp that AdaMixUp (MixUp as Locally Linear Out-Of-Manifold "
          "Regularization, 1809.02499) analyses", inputs="inputs, targets, key",
          hparams={"alpha": 1.0}),
    Entry("distance_covariance", fairness.distance_covariance, _FAIR,
          "Measuring and testing dependence by correlation of distances (2007)", "0803.4101",
          "dcor 0.7 distance_covariance_sqr (V) / u_distance_covariance_sqr (unbiased=True)",
          inputs="outputs, attributes", hparams={"strength": 1.0}),
    Entry("per_attribute_distance_covariance", fairness.per_attribute_distance_covariance,
          _FAIR, _MULTITYPE, "2509.08163", "sum of per-attribute U-statistic dCov^2 (the "
          "paper's baseline; dcor on each pair)", inputs="outputs, attributes",
          hparams={"strength": 1.0}),
    Entry("joint_distance_covariance", fairness.joint_distance_covariance, _FAIR,
          _MULTITYPE + "; JdCov: 1711.09179", "2509.08163",
          "Chakraborty & Zhang's U-statistic JdCov (subtracting n c^m / (n - 3); the paper's "
          "dcovs.py subtracts n / (n - 3), equal at c = 1)", inputs="outputs, attributes",
          hparams={"strength": 1.0, "c": 1.0}),
    Entry("concatenated_distance_covariance", fairness.concatenated_distance_covariance,
          _FAIR, _MULTITYPE, "2509.08163", "CCdCov: U-statistic dCov^2 against the "
          "concatenated (one-hot encoded) attributes", inputs="outputs, attributes",
          hparams={"strength": 1.0}),
    Entry("monge_gap", transport.monge_gap, "regularizers/transport",
          "The Monge Gap: A Regularizer to Learn All Transport Maps (2023)", "2302.04953",
          "ott.neural.methods.monge_gap.monge_gap_from_samples (ott-jax 0.6; optional extra "
          "jaxreg[transport])", inputs="source, mapped", hparams={"strength": 1.0},
          stops_gradient="the default epsilon (5% of the mean cost) is held constant, as in "
          "ott"),
    # -- Sharpness-aware train steps ------------------------------------------------------
    Entry("sam", sharpness.sam, "sharpness",
          "Sharpness-Aware Minimization for Efficiently Improving Generalization (2021)",
          "2010.01412", "google-research/sam and davda54/sam (rho=0.05); optax.contrib.sam is "
          "the optimizer-wrapper form", inputs="perturbation", hparams={"rho": 0.05}),
    Entry("asam", sharpness.asam, "sharpness",
          "ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of Deep "
          "Neural Networks (2021)", "2102.11600", "SamsungLabs/ASAM asam.py (rho=0.5, eta=0.01)",
          inputs="perturbation", hparams={"rho": 0.5, "eta": 0.01}),
    Entry("adversarial_model_perturbation", sharpness.adversarial_model_perturbation,
          "sharpness", "Regularizing Neural Networks via Adversarial Model Perturbation (2021)",
          "2010.04925", "hiyouga/AMP-Regularizer amp.py (epsilon=0.5, inner_lr=1, inner_iter=1, "
          "per-tensor projection)", inputs="perturbation",
          hparams={"epsilon": 0.5, "inner_lr": 1.0}),
    # -- Model editing ----------------------------------------------------------------------
    Entry("dare", model_editing.dare, "model_editing",
          "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a "
          "Free Lunch (2024)", "2311.03099",
          "yule-BUAA/MergeLM mask_input_with_mask_rate (random, on the deltas, rescaled)",
          inputs="edit", hparams={"drop_rate": 0.9}),
    Entry("darex_q", model_editing.darex_q_search, "model_editing",
          "DARE the Extreme: Revisiting Delta-Parameter Pruning for Fine-Tuned Models (2025)",
          "2410.09344", "vengdeng/DAREx find_q_encoder.py --outputchange (one global q, "
          "chosen without labels)", inputs="edit search",
          hparams={"drop_rate": 0.9, "q_max": 1.0}),
    Entry("task_arithmetic", model_editing.merge, "model_editing",
          "Editing Models with Task Arithmetic (2023)", "2212.04089",
          "the paper's theta_0 + sum_t lambda_t tau_t", inputs="merge"),
    Entry("atlas", model_editing.apply_coefficients, "model_editing",
          "Knowledge Composition using Task Vectors with Learned Anisotropic Scaling (2024)",
          "2407.02880", "fredzzhang/atlas src/composition.py (one coefficient per task and "
          "tensor, zero init; learned with learn_coefficients)", inputs="merge"),
    # -- Hyperparameter optimization --------------------------------------------------------
    Entry("implicit_hypergradient", hypergradient.implicit_hypergradient, "hyperparameters",
          "Optimizing Millions of Hyperparameters by Implicit Differentiation (2020)",
          "1911.02590", "lorraine2/implicit-hyper-opt neumann_hyperstep_preconditioner (times "
          "elementary_lr); the direct term added with its sign", inputs="hypergradient",
          hparams={"learning_rate": 0.1}),
)

FAMILIES = tuple(dict.fromkeys(e.family for e in ENTRIES))
_BY_NAME = {e.name: e for e in ENTRIES}
if len(_BY_NAME) != len(ENTRIES):
    raise RuntimeError("duplicate names in the jaxreg catalog")


def get(name: str) -> Entry:
    """Returns the entry called ``name``; the error suggests the closest names and lists the
    valid ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_BY_NAME), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise KeyError(f"unknown component {name!r}{hint}; the catalog has: "
                       f"{', '.join(sorted(_BY_NAME))}") from None


def tests_naming(entry: Entry, test_files: Mapping[str, str]) -> dict[str, int]:
    """``{path: lines}``: the test files (``{path: text}``) with lines that name the entry or
    its function (``jaxreg show`` and the docs list them)."""
    names = {entry.name, getattr(entry.fn, "__name__", entry.name)}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(names))) + r")\b")
    found = {}
    for path, text in test_files.items():
        count = sum(1 for line in text.splitlines() if pattern.search(line))
        if count:
            found[path] = count
    return found


def describe(entry: Entry, tests: Mapping[str, int] | None = None) -> str:
    """``jaxreg show NAME``: the entry's signature, paper, reference, call convention,
    hyperparameters, docstring and (``tests``: ``{path: lines}``) the tests that name it."""
    fn = entry.fn
    where = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', entry.name)}"
    try:
        signature = f"{entry.name}{inspect.signature(fn)}"
    except (TypeError, ValueError):
        signature = entry.name
    lines = [signature, "", f"  {where}  ({entry.family}; provided by {entry.provider})",
             f"  paper:     {entry.paper}" + (f", https://arxiv.org/abs/{entry.arxiv}"
                                              if entry.arxiv else ""),
             f"  matches:   {entry.reference}",
             f"  inputs:    {entry.inputs}: {INPUT_KINDS[entry.inputs]}"]
    if entry.hparams:
        lines.append("  hparams:   " + ", ".join(f"{k}={v}" for k, v in entry.hparams.items()))
    if entry.stops_gradient:
        lines.append(f"  no gradient through: {entry.stops_gradient}")
    if entry.claims:
        lines.append("  claims:    " + "; ".join(f"{c} ({CLAIMS[c]})" for c in entry.claims))
    if reads(entry):
        lines.append(f"  reads:     the objectives' {reads(entry)} ({READS[reads(entry)]})")
    if tests is not None:
        named = ", ".join(f"{path} ({n} lines)" for path, n in tests.items())
        lines.append(f"  tests:     {named or 'none name it'}; every entry also runs through "
                     "the catalog-driven contract suites (tests/**/test_*contract.py)")
    doc = inspect.getdoc(fn)
    if doc:
        lines += ["", *("  " + line if line else "" for line in doc.splitlines())]
    return "\n".join(lines)


def reads(entry: Entry) -> str:
    """What an aggregator reads, hence which ``make_step`` engines serve it: ``"values"`` (a
    scalarization: one backward pass), ``"Gramian"`` (built from a weighting: every engine,
    ``"layers"`` by default) or ``"Jacobian"`` (``engine="jacobian"`` only); ``""`` for
    entries that are not aggregators."""
    if not entry.inputs.startswith("jacobian"):
        return ""
    from jaxreg.multiobjective.base import weighting_of

    m = 4 if entry.name in ("krum", "trimmed_mean") else 2
    try:
        weighting = weighting_of(entry.fn(num_objectives=m, **entry.hparams))
    except TypeError:  # an aggregator without num_objectives
        weighting = weighting_of(entry.fn(**entry.hparams))
    if weighting is None:
        return "Jacobian"
    return "Gramian" if weighting.uses_gramian else "values"


def entries(family: str | None = None) -> tuple[Entry, ...]:
    """All entries, or those of one family (the error lists the valid families)."""
    if family is None:
        return ENTRIES
    if family not in FAMILIES:
        raise KeyError(f"unknown family {family!r}; families: {', '.join(FAMILIES)}")
    return tuple(e for e in ENTRIES if e.family == family)


def page() -> str:
    """``docs/catalog.md``: every entry, by family (``jaxreg list --page`` writes it)."""
    parts = ["# The jaxreg catalog", "",
             "Generated from `jaxreg.catalog` by `jaxreg list --page`; a test keeps it current.",
             "Each entry agrees with the implementation named under *matches* on values and "
             "gradients (see `tests/`), and passes the contract suite (`tests/test_contract.py`)."]
    for family in FAMILIES:
        parts += ["", f"## {family}", "", table(family)]
    return "\n".join(parts) + "\n"


def table(family: str | None = None) -> str:
    """The catalog as a markdown table (aggregators also say what they read)."""
    chosen = entries(family)
    aggregators = any(reads(e) for e in chosen)
    header = ["name", "family", "provider", "paper", "arXiv", "matches", "gradient stopped at"]
    header += ["reads"] if aggregators else []
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in chosen:
        cells = [e.name, e.family, e.provider, e.paper, e.arxiv, e.reference,
                 e.stops_gradient or "–"] + ([reads(e) or "–"] if aggregators else [])
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
