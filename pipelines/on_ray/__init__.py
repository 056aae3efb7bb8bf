"""What runs on Ray, and how Ray is started.

``startup`` (how the project starts or joins Ray), ``auth`` (who may use a cluster), and the Ray
Train runners of the LM (``lm_training``) and of the VQ tokenizer (``vq_training``). No Dagster
here; the assets call these.
"""
