"""The worker side: the only package that imports torch, invarlock or lm_eval. The controller never imports it."""
