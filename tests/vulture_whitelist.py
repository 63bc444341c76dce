"""Names vulture cannot see used: config fields read through getattr or written to training_args.json,
coefficient tables looked up by name, and nn.Module.forward methods.

    vulture diffuseq scripts bench run_train.py sample_seq2seq.py tests/vulture_whitelist.py
"""
# ruff: noqa
_.forward  # bench/compare_original.py:152
top_k  # diffuseq/config/decoding.py:64
top_l  # diffuseq/config/decoding.py:65
tau  # diffuseq/config/decoding.py:66
noised_l  # diffuseq/config/decoding.py:67
scale_end  # diffuseq/config/decoding.py:68
clamp_skip  # diffuseq/config/decoding.py:69
p_d  # diffuseq/config/decoding.py:70
timestep_respacing  # diffuseq/config/train.py:97
learn_sigma  # diffuseq/config/train.py:98
predict_xstart  # diffuseq/config/train.py:99
rescale_timesteps  # diffuseq/config/train.py:100
rescale_learned_sigmas  # diffuseq/config/train.py:102
use_kl  # diffuseq/config/train.py:103
emb_scale_factor  # diffuseq/config/train.py:104
fp16_scale_growth  # diffuseq/config/train.py:105
near_step  # diffuseq/config/train.py:106
far_step  # diffuseq/config/train.py:107
near_lambda  # diffuseq/config/train.py:108
far_lambda  # diffuseq/config/train.py:109
_.sqrt_alphas_cumprod  # diffuseq/diffusion/process.py:43
_.posterior_log_variance_clipped  # diffuseq/diffusion/process.py:47
_.posterior_mean_coef1  # diffuseq/diffusion/process.py:50
_.posterior_mean_coef2  # diffuseq/diffusion/process.py:51
_.fixed_large_log_variance  # diffuseq/diffusion/process.py:54
_.sqrt_recip_alphas_cumprod  # diffuseq/diffusion/process.py:56
_.sqrt_recipm1_alphas_cumprod  # diffuseq/diffusion/process.py:57
_.forward  # diffuseq/model/denoiser.py:66
_.forward  # diffuseq/model/encoder.py:80
_.forward  # diffuseq/model/encoder.py:117
_.forward  # diffuseq/model/encoder.py:128
_.forward  # diffuseq/model/encoder.py:141
_.forward  # diffuseq/model/encoder.py:152
_.forward  # diffuseq/model/encoder.py:164
_.forward  # diffuseq/training/cross_entropy.py:48
warmed_up  # diffuseq/diffusion/timesteps.py: read by tests (a host read, not for the training step)
L2NoisePenalty  # diffuseq/diffusion/penalty.py: registered in PENALTIES by @register
L2NoiseRandomPenalty  # diffuseq/diffusion/penalty.py: registered in PENALTIES by @register
CosinePenalty  # diffuseq/diffusion/penalty.py: registered in PENALTIES by @register
KLPenalty  # diffuseq/diffusion/penalty.py: registered in PENALTIES by @register
__getattr__  # diffuseq/__init__.py: PEP 562 lazy names (Seq2SeqDiffusion, ...)
__dir__  # diffuseq/__init__.py: PEP 562
