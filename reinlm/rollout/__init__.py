"""reinlm.rollout"""
