"""The PTQ algorithms PaddleSlim's post-training quantization offers (the recipe's int8.algo choices,
compress.config.Int8Section)."""

PTQ_ALGOS = ("KL", "hist", "avg", "mse", "abs_max")
