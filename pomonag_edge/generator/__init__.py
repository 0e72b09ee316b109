"""Score-based diffusion over architecture encodings (POMONAG / DiffusionNAG), in small separate pieces:

sde.py (schedule only), score_net.py (time-conditioned transformer), losses.py (denoising score matching),
train.py (training + checkpoint files), sampler.py (the one predictor-corrector loop), noise_aware.py
(predictors of x_t's objectives: the exact posterior mean, or a distilled network), guidance.py (their weighted,
budget-penalised gradient), run.py (one generate request -> run folder), train_cli.py (``pretrain generator``),
layout.py (an encoding's categorical groups: NSGA-II genes, score-network tokens, MobileNetV3 depth masking),
sampled.py (the distilled noise-aware predictor of a space too large to score whole).
The search over these lives in ``pomonag_edge.search``. Nothing is imported here, so the CLI can load
``train_cli`` without torch.
"""
