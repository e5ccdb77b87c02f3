"""The protocol of ``jaxreg run pretrain``: ``get_config(variant)``.

Variants:
    cpu: the default; a 0.85M-parameter byte-level transformer on Shakespeare, about 10 minutes
        on 2 CPU cores.
    ablations: z-loss strength x weight-decay coupling x learning rate x seeds, one vmapped
        grid of a smaller model (Wortsman et al. 2024's learning-rate sensitivity).
    gpu: one accelerator, bfloat16 compute, a 19M-parameter model.
    pod: a TPU v5p-64 pod slice (32 chips, 4 hosts): GPT-2 small (124M) on a 4 x 8 data x
        fsdp mesh with global batch 512 x 1024. It cannot run here; it documents the shape
        of a large run: ``jaxreg run pretrain --config pod`` on every host, with
        ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` set (or on
        Cloud TPU, where JAX finds them itself).

Every field can be overridden from the command line (``--set optimizer.learning_rate=1e-3``);
the config used is written beside the results as ``config.json``, which ``--config`` reads.
"""

import ml_collections


def get_config(variant: str = "cpu") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.variant = variant
    config.data = dict(corpus="auto", sequence_length=128)
    config.model = dict(d_model=128, num_layers=4, num_heads=4, mlp_dim=512,
                        positions="rotary", dtype="float32", norm="layernorm",
                        tie_embeddings=False)
    # Adam with a linear warmup and a cosine decay to end_fraction of the peak; global-norm
    # clipping; weight decay either decoupled and independent of the learning rate
    # (jaxreg.optim.decoupled_weight_decay: -eta_t * lambda * theta, Loshchilov & Hutter)
    # or coupled as optax.adamw/PyTorch (-lr * eta_t * lambda * theta).
    config.optimizer = dict(learning_rate=3e-3, warmup_steps=100, end_fraction=0.1, b1=0.9,
                            b2=0.95, eps=1e-8, clip_norm=1.0, decoupled_decay=3e-4,
                            coupled_decay=0.0)
    config.loss = dict(z_loss=1e-4)  # PaLM's logit z-loss strength
    config.train = dict(batch_size=32, steps=1500, log_every=100, eval_windows=512, seed=0,
                        checkpoint_every=500, async_checkpoints=True)
    # mesh axis sizes (-1: the devices the others leave) and the logical-axis rules:
    # data_parallel, fsdp or fsdp_tensor; fake_devices > 0 splits the CPU into that many
    # XLA devices (set before JAX starts).
    config.mesh = dict(data=-1, fsdp=1, tensor=1, rules="fsdp", fake_devices=0)
    # peak FLOP/s of one device for MFU; 0: a known accelerator's bfloat16 dense peak, or on
    # CPU the float32 matmul throughput measured before training.
    config.peak_flops = 0.0
    config.ablations = dict(learning_rates=(), z_losses=(), seeds=(), evaluate_every=0)

    if variant == "cpu":
        pass
    elif variant == "ablations":
        config.data.sequence_length = 64
        config.model.update(d_model=64, num_layers=2, num_heads=4, mlp_dim=256)
        config.optimizer.update(warmup_steps=50, coupled_decay=0.1, decoupled_decay=1e-3)
        config.train.update(batch_size=16, steps=600, eval_windows=256, checkpoint_every=0)
        # the decays match at the middle learning rate: coupled 0.1 x 1e-2 = decoupled 1e-3
        config.ablations = dict(learning_rates=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
                                z_losses=(0.0, 1e-4), seeds=(0, 1), evaluate_every=100)
    elif variant == "gpu":
        config.data.sequence_length = 256
        config.model.update(d_model=512, num_layers=6, num_heads=8, mlp_dim=2048,
                            dtype="bfloat16")
        config.optimizer.update(learning_rate=1e-3, warmup_steps=200, decoupled_decay=1e-4)
        config.train.update(batch_size=64, steps=1000, log_every=100, eval_windows=1024,
                            checkpoint_every=0)
    elif variant == "pod":
        config.data.sequence_length = 1024
        config.model.update(d_model=768, num_layers=12, num_heads=12, mlp_dim=3072,
                            dtype="bfloat16")
        config.optimizer.update(learning_rate=6e-4, warmup_steps=2000, decoupled_decay=1e-4)
        config.train.update(batch_size=512, steps=100_000, log_every=500, eval_windows=4096,
                            checkpoint_every=5000)
        config.mesh.update(data=4, fsdp=8, tensor=1, rules="fsdp")
        config.peak_flops = 459e12  # TPU v5p, bfloat16 dense, per chip
    else:
        raise ValueError(f"unknown pretrain variant {variant!r}; variants: cpu, ablations, "
                         "gpu, pod")
    return config
