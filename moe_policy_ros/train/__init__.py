"""`moe-policy-ros train`: behaviour cloning of the reference MoE families on recorded episodes.

``data`` holds the episodes in memory and samples augmented batches, ``trainer`` runs the
optimisation (phases, AdamW, warm-up + cosine, EMA, validation, checkpoints, in-process
rollouts), ``cli`` is the command. Everything here needs torch; the evaluate command
(:mod:`moe_policy_ros.tools.evaluate`) and the rollout loop (:mod:`moe_policy_ros.rollout`) do not.
"""
