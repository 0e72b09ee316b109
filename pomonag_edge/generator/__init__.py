"""Score-based diffusion over architecture encodings (POMONAG / DiffusionNAG), in small separate pieces:

sde.py (schedule only), score_net.py (time-conditioned transformer), losses.py (denoising score matching),
train.py (training + checkpoint files), sampler.py (the one predictor-corrector loop), noise_aware.py
(predictors of x_t's objectives: the exact posterior mean, or a distilled network), guidance.py (their weighted,
budget-penalised gradient), run.py (one generate request -> run folder), train_cli.py (``train generator``).
The search over these lives in ``pomonag_edge.search``. Nothing is imported here, so the CLI can load
``train_cli`` without torch.
"""
