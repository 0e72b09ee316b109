"""Score-based diffusion over architecture encodings (POMONAG / DiffusionNAG), in small separate pieces:

sde.py (schedule only), score_net.py (time-conditioned transformer), losses.py (denoising score matching),
train.py (training + checkpoint files), sampler.py (the one predictor-corrector loop), noise_aware.py
(predictors of x_t's objectives: the exact posterior mean, or a distilled network), guidance.py (their weighted,
budget-penalised gradient), sampled.py (the distilled noise-aware predictor of a space too large to score
whole), strategy.py (the diffusion search strategy over a ``pomonag_edge.problem.SearchProblem``). Nothing is
imported here, so importing the package does not import torch.
"""
